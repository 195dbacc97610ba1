"""The monitoring artifacts under ``deploy/monitoring/`` and the metric names the service exports.

Pytest-independent, so the end-to-end test and ``python -m tests.monitoring.artifacts`` can use
it too. The exported names come from the real exposition: build ``Metrics(CollectorRegistry())``,
give every labelled instrument one child so its series appear, render the registry with
``prometheus_client.generate_latest`` and parse it back. Nothing here lists metric names by hand.

``python -m tests.monitoring.artifacts`` prints the metric table kept in
``README.md`` (the Monitoring section) between the ``metrics-table`` markers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from consumer.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "tests" / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
README = REPO / "README.md"

#: Every token that looks like one of our metric names (in PromQL, templates or prose).
METRIC_TOKEN = re.compile(r"asapp_consumer_[a-z0-9_]+")

TABLE_BEGIN = "<!-- metrics-table:begin (generated: python -m tests.monitoring.artifacts) -->"
TABLE_END = "<!-- metrics-table:end -->"

#: Grafana variables → values that make a dashboard expression plain PromQL ("All" selected).
_GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "${datasource}": "prometheus",
    "$namespace": ".*",
    "$entity": ".*",
}


@dataclass(frozen=True, slots=True)
class MetricDoc:
    """One exported metric family as an operator queries it."""

    name: str  # counters with ``_total``, histograms by base name, the info as ``_info``
    type: str
    labels: tuple[str, ...]
    help: str
    sample_names: tuple[str, ...]  # what actually appears in the exposition


def _exercised_exposition() -> str:
    """The text exposition of a fresh ``Metrics`` with one child per labelled instrument."""
    metrics = Metrics(CollectorRegistry())
    for instrument in vars(metrics).values():
        # ``_labelnames`` is private but stable; without a child a labelled family has no series.
        if isinstance(instrument, MetricWrapperBase) and instrument._labelnames:
            instrument.labels(*("x",) * len(instrument._labelnames))
    return generate_latest(metrics.registry).decode()


def metric_docs() -> list[MetricDoc]:
    """Every family the service exports, in registration order (``_created`` folded in)."""
    families = list(text_string_to_metric_families(_exercised_exposition()))
    names = {family.name for family in families}
    docs: list[MetricDoc] = []
    created: dict[str, set[str]] = {}
    for family in families:
        base = family.name.removesuffix("_created")
        if family.name.endswith("_created") and base in names:
            created.setdefault(base, set()).update(s.name for s in family.samples)
            continue
        suffix = "_total" if family.type == "counter" else ""
        labels = sorted({k for s in family.samples for k in s.labels} - {"le"})
        docs.append(
            MetricDoc(
                name=family.name + suffix,
                type=family.type,
                labels=tuple(labels),
                help=family.documentation,
                sample_names=tuple(sorted({s.name for s in family.samples})),
            )
        )
    return [
        MetricDoc(
            d.name,
            d.type,
            d.labels,
            d.help,
            tuple(sorted({*d.sample_names, *created.get(d.name.removesuffix("_total"), ())})),
        )
        for d in docs
    ]


def exported_names() -> frozenset[str]:
    """Every sample name in the exposition (``_total``, ``_bucket``/``_sum``/``_count``, ...)."""
    return frozenset(name for doc in metric_docs() for name in doc.sample_names)


def metric_tokens(text: str) -> set[str]:
    """Every ``asapp_consumer_*`` token in ``text``."""
    return set(METRIC_TOKEN.findall(text))


def load_dashboard() -> dict[str, Any]:
    """The dashboard JSON as Grafana would import it."""
    with DASHBOARD.open(encoding="utf-8") as fh:
        dashboard: dict[str, Any] = json.load(fh)
    return dashboard


def dashboard_panels(dashboard: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """All panels, including those nested in collapsed rows."""
    dashboard = load_dashboard() if dashboard is None else dashboard
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_rows(dashboard: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Row title → the panels under it (those after the row on an expanded dashboard, or
    nested in a collapsed row), in order. Panels above the first row are left out."""
    dashboard = load_dashboard() if dashboard is None else dashboard
    rows: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] | None = None
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], [])
            current.extend(panel.get("panels", []))
        elif current is not None:
            current.append(panel)
    return rows


def dashboard_exprs(dashboard: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """``(panel title, expr)`` for every panel target, in panel order."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def render_grafana_expr(expr: str) -> str:
    """Substitute the dashboard's variables so ``expr`` is plain PromQL (``All`` selected)."""
    for var, value in _GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    if "$" in expr:
        raise ValueError(f"unknown Grafana variable left in {expr!r}")
    return expr


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule in ``alerts.yml`` (recording rules excluded)."""
    with ALERTS.open(encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def alert_tests() -> list[dict[str, Any]]:
    """The ``tests`` entries of the promtool unit-test file."""
    with ALERTS_TEST.open(encoding="utf-8") as fh:
        tests: list[dict[str, Any]] = yaml.safe_load(fh)["tests"]
    return tests


def github_anchor(heading: str) -> str:
    """The anchor GitHub generates for a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def readme_anchors(text: str) -> set[str]:
    """Anchors of every heading in a Markdown document."""
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", text, re.M)}


def where_to_look_first(text: str | None = None) -> list[tuple[str, str]]:
    """``(row, panel)`` for every panel the README's "Where to look first" table names, written
    there as ``Row: *Panel*, *Panel*; Row: *Panel*`` in its second column."""
    text = README.read_text(encoding="utf-8") if text is None else text
    start = text.index("Where to look first:")
    table = text[start : text.index("\n\n", text.index("|", start))]
    pairs: list[tuple[str, str]] = []
    for line in table.splitlines()[3:]:  # the heading, the header and the rule
        cell = line.split("|")[2]
        for part in cell.split(";"):
            row, _, panels = part.partition(":")
            pairs.extend((row.strip(), title) for title in re.findall(r"\*([^*]+)\*", panels))
    return pairs


def metric_table() -> str:
    """The Markdown table of every exported metric, as kept in the README."""
    lines = [
        "| Metric | Type | Labels | Meaning |",
        "|---|---|---|---|",
    ]
    for doc in metric_docs():
        name = f"`{doc.name}`"
        if doc.type == "histogram":
            name += " (`_bucket`, `_sum`, `_count`)"
        labels = ", ".join(f"`{label}`" for label in doc.labels) or "—"
        meaning = doc.help.replace("|", "\\|")
        lines.append(f"| {name} | {doc.type} | {labels} | {meaning} |")
    return "\n".join(lines)


def readme_table() -> str:
    """The table currently between the markers in the README."""
    text = README.read_text(encoding="utf-8")
    start = text.index(TABLE_BEGIN) + len(TABLE_BEGIN)
    return text[start : text.index(TABLE_END)].strip()


if __name__ == "__main__":
    print(TABLE_BEGIN)
    print(metric_table())
    print(TABLE_END)
