"""The shipped Prometheus rules and Grafana dashboard: valid (promtool when it is installed —
`.ci/run` installs Debian's `prometheus` package — else a parser), their alerts fire on synthetic
series (promtool's rule unit tests), and every metric they read is one this app exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "chatbot-training.json"
EXTERNAL = {"up"}  # Prometheus's own
PROMQL_WORDS = {
    "sum", "rate", "by", "without", "histogram_quantile", "clamp_min", "min", "max", "delta", "increase", "and",
    "le", "on", "or", "unless", "avg", "count", "bool", "offset", "ignoring", "group_left", "group_right",
}  # fmt: skip


def exported_names() -> set[str]:
    """Every series name /metrics can carry: the registered metrics (with their suffixes) and the
    gauges computed at scrape time."""
    from django.test import Client
    from prometheus_client import REGISTRY

    from monitoring.metrics import STATE

    Client().get("/healthz")  # django-prometheus defines its request metrics with its middleware
    names = set(REGISTRY._names_to_collectors)
    for family in ("chatbot_queue_depth", "chatbot_documents", "chatbot_vectors", "chatbot_index_recall",
                   "chatbot_evaluation_ndcg", "chatbot_training_jobs_recent"):  # fmt: skip
        names.add(family)
    assert STATE is not None
    return names


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    return {word for word in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr) if word not in PROMQL_WORDS}


def test_rules_parse_and_read_only_exported_metrics(db):
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 8 and len({r["alert"] for r in rules}) == len(rules)
    exported = exported_names() | EXTERNAL
    for rule in rules:
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        unknown = metric_names(rule["expr"]) - exported
        assert not unknown, f"{rule['alert']} reads metrics this app does not export: {unknown}"


def test_dashboard_panels_read_exported_metrics(db):
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names() | EXTERNAL
    targets = [t for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(dashboard["panels"]) >= 10 and all(panel["title"] for panel in dashboard["panels"])
    for target in targets:
        assert not metric_names(target["expr"]) - exported, target["expr"]
    assert dashboard["templating"]["list"][0]["type"] == "datasource"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_promtool_checks_the_rules_config_and_rule_unit_tests():
    folder = DEPLOY / "prometheus"
    for command in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"],
                    ["test", "rules", "alerts_test.yml"]):  # fmt: skip
        done = subprocess.run(["promtool", *command], cwd=folder, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
