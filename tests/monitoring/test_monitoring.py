"""The alert rules, their promtool tests, the dashboard and the README agree with what we export.

Metric names come mechanically from the real exposition (:mod:`tests.monitoring.artifacts`), so
renaming or removing an instrument in ``consumer/metrics.py`` breaks these tests instead of
silently emptying a panel or an alert. promtool must be installed: a missing binary fails with
an install hint rather than skipping. ``PROMTOOL`` overrides the binary's path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring import artifacts

PROMTOOL_HINT = (
    "promtool not found: install Debian's prometheus package "
    "(`apt-get install -y prometheus`, which provides /usr/bin/promtool)"
)
REQUIRED_ANNOTATIONS = {"summary", "description", "runbook"}
SEVERITIES = {"critical", "warning", "info"}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = os.environ.get("PROMTOOL") or shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(found).is_file():
        pytest.fail(f"{PROMTOOL_HINT}; looked for {found}")
    return found


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=artifacts.REPO, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def exported() -> frozenset[str]:
    return artifacts.exported_names()


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    return artifacts.alert_rules()


# --- (a) and (b): promtool -------------------------------------------------------------------


def test_promtool_check_rules_passes(promtool: str) -> None:
    result = _run([promtool, "check", "rules", str(artifacts.ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = _run([promtool, "test", "rules", str(artifacts.ALERTS_TEST)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_expression_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Each panel target, with the dashboard's variables substituted, parses as PromQL."""
    exprs = artifacts.dashboard_exprs()
    rules_file = tmp_path / "dashboard_rules.yml"
    records = [
        {"record": f"dashboard:panel_{i}", "expr": artifacts.render_grafana_expr(expr)}
        for i, (_title, expr) in enumerate(exprs)
    ]
    rules_file.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}), encoding="utf-8"
    )
    result = _run([promtool, "check", "rules", str(rules_file)])
    assert result.returncode == 0, result.stdout + result.stderr


# --- (c): only exported metric names -----------------------------------------------------


def test_exposition_yields_expanded_names(exported: frozenset[str]) -> None:
    """Sanity check on the extraction: counters, histograms and the info are all expanded."""
    assert "asapp_consumer_messages_consumed_total" in exported
    assert {
        "asapp_consumer_batch_items_bucket",
        "asapp_consumer_batch_items_sum",
        "asapp_consumer_batch_items_count",
    } <= exported
    assert "asapp_consumer_build_info" in exported
    assert "asapp_consumer_consumer_lag" in exported
    assert "asapp_consumer_messages_consumed" not in exported


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(artifacts.DASHBOARD, id="dashboard"),
        pytest.param(artifacts.ALERTS, id="alerts"),
        pytest.param(artifacts.ALERTS_TEST, id="alerts-test"),
    ],
)
def test_only_exported_metric_names_are_referenced(path: Path, exported: frozenset[str]) -> None:
    tokens = artifacts.metric_tokens(path.read_text(encoding="utf-8"))
    assert tokens, f"no asapp_consumer_* metric referenced in {path.name}"
    unknown = sorted(tokens - exported)
    assert not unknown, f"{path.name} references metrics the service does not export: {unknown}"


def test_every_dashboard_panel_target_uses_exported_metrics(exported: frozenset[str]) -> None:
    for title, expr in artifacts.dashboard_exprs():
        tokens = artifacts.metric_tokens(expr)
        assert tokens, f"panel {title!r} queries no asapp_consumer_* metric: {expr}"
        assert tokens <= exported, f"panel {title!r}: unknown {sorted(tokens - exported)}"


def test_dashboard_shape() -> None:
    dashboard = artifacts.load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "entity" in variables
    ids = [p["id"] for p in artifacts.dashboard_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in artifacts.dashboard_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_covers_the_operator_questions() -> None:
    """The panels the runbooks point to exist (by the metric they query)."""
    exprs = " ".join(expr for _title, expr in artifacts.dashboard_exprs())
    for needle in [
        "rate(asapp_consumer_messages_consumed_total",
        "rate(asapp_consumer_items_accepted_total",
        "asapp_consumer_consumer_lag",
        "histogram_quantile(0.99, sum by (le, entity) "
        "(rate(asapp_consumer_end_to_end_latency_seconds_bucket",
        "histogram_quantile(0.5, sum by (le, entity) "
        "(rate(asapp_consumer_end_to_end_latency_seconds_bucket",
        "rate(asapp_consumer_http_requests_total",
        "rate(asapp_consumer_items_rejected_total",
        "rate(asapp_consumer_dead_letters_total",
        "rate(asapp_consumer_batch_items_sum",
        "rate(asapp_consumer_batch_items_count",
        "rate(asapp_consumer_batches_sent_total",
        "asapp_consumer_requests_today",
        "asapp_consumer_daily_request_quota",
        "asapp_consumer_in_flight_requests",
        "asapp_consumer_paused_partitions",
        "rate(asapp_consumer_retries_total",
        "rate(asapp_consumer_backoff_seconds_total",
        "rate(asapp_consumer_rate_limiter_wait_seconds_total",
        "asapp_consumer_commit_duration_seconds_bucket",
        "asapp_consumer_ready",
        "asapp_consumer_credentials_rejected",
        "asapp_consumer_buffered_bytes",
        "asapp_consumer_items_deferred",
        "rate(asapp_consumer_items_superseded_total",
        "asapp_consumer_offset_rewinds_total",
        "asapp_consumer_consumer_errors_total",
    ]:
        assert needle in exprs, f"no dashboard panel queries {needle}"


def test_api_economy_row_shows_the_group_budget() -> None:
    """The row the quota runbooks point to: the group's gauges (read with ``max``: every pod
    exports the same value), the request rate, items per request and the batch wait."""
    rows = artifacts.dashboard_rows()
    assert "API economy" in rows, f"no 'API economy' row in {sorted(rows)}"
    exprs = " ".join(t["expr"] for panel in rows["API economy"] for t in panel["targets"])
    for needle in [
        "max(asapp_consumer_quota_requests_used_today",
        "max(asapp_consumer_quota_requests_remaining",
        "max(asapp_consumer_daily_request_quota",
        "max(asapp_consumer_quota_sustainable_rps",
        "sum(rate(asapp_consumer_http_requests_total",
        "asapp_consumer_batch_items_bucket",
        "histogram_quantile(0.5, sum by (le, entity) "
        "(rate(asapp_consumer_batch_wait_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, entity) "
        "(rate(asapp_consumer_batch_wait_seconds_bucket",
        "max(asapp_consumer_quota_exhausted",
        "asapp_consumer_quota_ledger_fallback",
        "max by (pod, instance) (asapp_consumer_quota_share",
    ]:
        assert needle in exprs, f"the API economy row queries no {needle}"
    assert "sum(asapp_consumer_quota_requests" not in exprs, "group gauges must not be summed"


def test_where_to_look_first_names_real_panels() -> None:
    """Each ``Row: *Panel*`` of the README's table is a panel of that row (a title may be
    shortened to its start, as "Poll loop age" for "Poll loop age (worst pod)")."""
    rows = artifacts.dashboard_rows()
    named = artifacts.where_to_look_first()
    assert len(named) >= 10, named
    for row, title in named:
        assert row in rows, f"README names a dashboard row {row!r} that does not exist"
        titles = [p["title"] for p in rows[row]]
        assert any(t.startswith(title) for t in titles), f"no panel {title!r} in row {row!r}"


# --- (d): every alert is tested ----------------------------------------------------------


def _cases(expect_firing: bool) -> set[str]:
    return {
        case["alertname"]
        for test in artifacts.alert_tests()
        for case in test.get("alert_rule_test", [])
        if bool(case.get("exp_alerts")) is expect_firing
    }


def test_every_alert_has_a_firing_test_case(rules: list[dict[str, Any]]) -> None:
    names = {rule["alert"] for rule in rules}
    untested = sorted(names - _cases(expect_firing=True))
    assert not untested, f"alerts without a promtool case that fires them: {untested}"


def test_every_alert_has_a_quiet_test_case(rules: list[dict[str, Any]]) -> None:
    names = {rule["alert"] for rule in rules}
    untested = sorted(names - _cases(expect_firing=False))
    assert not untested, f"alerts without a promtool case proving they stay quiet: {untested}"


def test_test_cases_name_real_alerts(rules: list[dict[str, Any]]) -> None:
    names = {rule["alert"] for rule in rules}
    stale = sorted((_cases(True) | _cases(False)) - names)
    assert not stale, f"promtool cases for alerts that no longer exist: {stale}"


# --- alert conventions and the README ----------------------------------------------------


def test_alerts_carry_severity_and_annotations(rules: list[dict[str, Any]]) -> None:
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]
        missing = REQUIRED_ANNOTATIONS - set(rule.get("annotations", {}))
        assert not missing, f"{rule['alert']} lacks annotations {sorted(missing)}"


def test_runbooks_point_to_existing_readme_anchors(rules: list[dict[str, Any]]) -> None:
    anchors = artifacts.readme_anchors(artifacts.README.read_text(encoding="utf-8"))
    assert "monitoring" in anchors
    for rule in rules:
        runbook = rule["annotations"]["runbook"]
        match = re.fullmatch(r"README\.md#([\w-]+)", runbook)
        assert match, f"{rule['alert']}: runbook {runbook!r} is not README.md#<anchor>"
        assert match.group(1) in anchors, f"{rule['alert']}: no heading for {runbook}"


def test_alerts_only_select_on_job_for_up(rules: list[dict[str, Any]]) -> None:
    """Rules must work with or without namespace/pod labels: never match on them."""
    for rule in rules:
        assert not re.search(r"\b(namespace|pod)\s*=~?\s*\"", rule["expr"]), rule["alert"]
        if "job=" in rule["expr"]:
            assert "up{" in rule["expr"], f"{rule['alert']} selects on job"


def test_readme_metric_table_is_current() -> None:
    assert artifacts.readme_table() == artifacts.metric_table(), (
        "README.md metric table is stale: regenerate it with "
        "`.venv/bin/python -m tests.monitoring.artifacts` and paste it between the markers"
    )


def test_readme_lists_every_exported_metric_and_alert(rules: list[dict[str, Any]]) -> None:
    text = artifacts.README.read_text(encoding="utf-8")
    for doc in artifacts.metric_docs():
        assert f"`{doc.name}`" in text, f"README does not list {doc.name}"
    for rule in rules:
        assert rule["alert"] in text, f"README does not explain {rule['alert']}"
