"""checkov (framework kubernetes) passes on every rendered overlay.

A check may be waived only inline, on the resource, with a reason:
``checkov.io/skip1: CKV_K8S_xx=<why it does not apply>``. The waivers allowed are listed in
:data:`WAIVERS`, so a new one is a reviewed change to this file, not a silent annotation.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.conftest import OVERLAYS

#: check id -> why it is waived (mirrors the annotations on the Deployment).
WAIVERS = {
    "CKV_K8S_35": "the service reads its configuration only from environment variables",
    "CKV_K8S_43": "overlays pin a tag; the release pipeline sets a digest",
}


def _results(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = report.get("results", {})
    return results


@pytest.mark.parametrize("overlay", [pytest.param(o, id=o) for o in OVERLAYS])
def test_checkov_has_no_failed_checks(
    checkov_reports: dict[str, dict[str, Any]], overlay: str
) -> None:
    report = checkov_reports[overlay]
    summary = report.get("summary", {})
    assert summary.get("parsing_errors", 0) == 0, summary
    assert summary.get("resource_count", 0) > 0, f"checkov scanned nothing: {summary}"
    assert summary.get("passed", 0) > 0, summary
    failed = [
        f"{c['check_id']} {c['check_name']} ({c['resource']})"
        for c in _results(report).get("failed_checks", [])
    ]
    assert not failed, f"{overlay}: checkov failed checks:\n" + "\n".join(failed)


@pytest.mark.parametrize("overlay", [pytest.param(o, id=o) for o in OVERLAYS])
def test_checkov_waivers_are_listed_and_justified(
    checkov_reports: dict[str, dict[str, Any]], overlay: str
) -> None:
    for check in _results(checkov_reports[overlay]).get("skipped_checks", []):
        reason = (check.get("check_result") or {}).get("suppress_comment") or ""
        assert check["check_id"] in WAIVERS, f"unreviewed waiver {check['check_id']}"
        assert len(reason.split()) >= 5, f"{check['check_id']} waived without a real reason"
