"""The monitoring assets of deploy/monitoring against a real cluster: the alerting rules
pass `promtool check rules`, and `promtool test rules` fed with what a real cluster's
/metrics showed fires exactly the alerts its state calls for (none when healthy); the
Grafana dashboard reads only figures the cluster exposes, and has a panel for each one an
alert reads.

A pair of scrapes becomes promtool's input series as the cluster would look if it stayed
as the second scrape found it: counters go on at the pace seen between the two scrapes,
other gauges hold, and a timestamp keeps its age (it moves with the clock), so each alert's
``for`` is met by a state that lasts, and nothing fires that the scrape did not show."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import Cluster, free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMETHEUS = MONITORING / "prometheus.yml"
K8S_SCHEDULER = MONITORING.parent / "k8s" / "scheduler.yaml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

# What Prometheus adds to every sample it scrapes.
TARGET = {"job": "chronosync", "instance": "scheduler:8081"}
# promtool's evaluation: a 15 s scrape interval, and a time past every rule's `for` and
# rate window.
STEP_S = 15
EVAL_S = 30 * 60
# The limit of ChronoSyncJobNotSucceeded for a job that runs every second: 2 × 1 s + 30 s.
EVERY_SECOND = "* * * * * *"
OVERDUE_S = 2 * 1 + 30

Series = tuple[str, tuple[tuple[str, str], ...]]


@pytest.fixture(autouse=True)
def promtool() -> None:
    if not os.access(PROMTOOL, os.X_OK):
        # CI installs it, so there its absence is a failure; elsewhere the tests skip,
        # naming the package.
        reason = "promtool is not installed (Debian's prometheus package; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@dataclass(frozen=True)
class Scrape:
    at: float  # Unix time, halfway through the request
    samples: dict[Series, float]
    cumulative: frozenset[str]  # names of counter and histogram samples

    def value(self, name: str, **labels: str) -> float | None:
        found = [v for (n, have), v in self.samples.items()
                 if n == name and all(dict(have).get(k) == w for k, w in labels.items())]
        return sum(found) if found else None


def scrape(cluster: Cluster) -> Scrape:
    before = time.time()
    with urllib.request.urlopen(cluster.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    at = (before + time.time()) / 2
    samples: dict[Series, float] = {}
    cumulative = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
            if family.type in ("counter", "histogram"):
                cumulative.add(sample.name)
    return Scrape(at=at, samples=samples, cumulative=frozenset(cumulative))


def selector(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    body = ",".join(f'{k}="{json.dumps(v)[1:-1]}"' for k, v in (*labels, *TARGET.items()))
    return f"{name}{{{body}}}"


def expand(start: float, step: float) -> str:
    """promtool's `a+bxn`: a, a+b, ... for the whole evaluation."""
    sign = "+" if step >= 0 else "-"
    return f"{start!r}{sign}{abs(step)!r}x{EVAL_S // STEP_S}"


def input_series(first: Scrape, last: Scrape) -> list[dict[str, str]]:
    elapsed = last.at - first.at
    assert elapsed > 0
    out = []
    for (name, labels), value in sorted(last.samples.items()):
        if name in last.cumulative:
            # A series the first scrape lacks belongs to a node started since: from 0.
            earlier = first.samples.get((name, labels), 0.0)
            pace = max(0.0, value - earlier) / elapsed
            values = expand(value, pace * STEP_S)
        elif name.endswith("_timestamp_seconds"):
            # promtool's time starts at 0 at the last scrape's moment.
            values = expand(value - last.at, STEP_S)
        else:
            values = expand(value, 0.0)
        out.append({"series": selector(name, labels), "values": values})
    return out


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def render(template: str, labels: dict[str, str]) -> str:
    """The annotations' templates, which use nothing but `{{ $labels.name }}`."""
    rendered = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m[1], ""),
                      template)
    assert "{{" not in rendered, f"a template beyond $labels: {template}"
    return rendered


def check_alerts(tmp_path: Path, phase: str, first: Scrape, last: Scrape,
                 fired: dict[str, list[dict[str, str]]]) -> None:
    """promtool evaluates the rules over the scraped state; every alert of the rules file
    is asserted: firing with exactly the label sets in ``fired``, or not at all."""
    tests = []
    for rule in rules():
        expected = []
        for own in fired.get(rule["alert"], []):
            labels = {**own, **rule.get("labels", {})}
            expected.append({
                "exp_labels": labels,
                "exp_annotations": {k: render(v, labels)
                                    for k, v in rule.get("annotations", {}).items()}})
        tests.append({"eval_time": f"{EVAL_S}s", "alertname": rule["alert"],
                      "exp_alerts": expected})
    unknown = set(fired) - {rule["alert"] for rule in rules()}
    assert not unknown, f"no such alert in {ALERTS.name}: {unknown}"
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    case = tmp_path / f"{phase}-test.yml"  # promtool's report names it
    case.write_text(yaml.safe_dump({
        "rule_files": [ALERTS.name],
        "evaluation_interval": f"{STEP_S}s",
        "tests": [{"interval": f"{STEP_S}s", "input_series": input_series(first, last),
                   "alert_rule_test": tests}]}))
    result = subprocess.run([PROMTOOL, "test", "rules", str(case)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def job_labels(cluster: Cluster, name: str) -> dict[str, str]:
    job = next(j for j in cluster.http("GET", "/jobs")[1]["jobs"] if j["name"] == name)
    return {"job_id": str(job["id"]), "job_name": name, **TARGET}


def submit_job(cluster: Cluster, name: str, command: str, **extra: Any) -> None:
    status, body = cluster.http("POST", "/schedule", {"name": name, "command": command,
                                                      "cron": EVERY_SECOND, **extra})
    assert status == 201, body


def scrape_when(cluster: Cluster, condition: Any, what: str, timeout: float = 60) -> Scrape:
    return wait_for(lambda: (lambda s: s if condition(s) else None)(scrape(cluster)),
                    timeout=timeout, what=what)


def test_the_alerting_rules_pass_promtool_s_check() -> None:
    result = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_the_example_prometheus_configuration_passes_promtool_s_check(
        tmp_path: Path) -> None:
    """With the rules beside it, and its token file where the example says; it scrapes
    the schedulers' Service of deploy/k8s."""
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == [ALERTS.name]
    service = next(doc for doc in yaml.safe_load_all(K8S_SCHEDULER.read_text())
                   if doc["kind"] == "Service")
    assert [c["targets"] for job in config["scrape_configs"]
            for c in job["static_configs"]] == [
        [f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"]]
    token = tmp_path / "token"
    token.write_text("secret\n")
    for scrape_config in config["scrape_configs"]:
        scrape_config["authorization"]["credentials_file"] = str(token)
    (tmp_path / PROMETHEUS.name).write_text(yaml.safe_dump(config))
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    result = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / PROMETHEUS.name)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_the_alerts_fire_on_what_a_real_cluster_s_metrics_show(cluster: Cluster,
                                                               tmp_path: Path) -> None:
    cluster.start("scheduler")
    cluster.start("coordinator")
    workers = [cluster.start("worker") for _ in range(2)]
    retired = cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=3)
    # A worker stopped cleanly is not a death: it is not alerted on.
    retired.signal(signal.SIGTERM)
    wait_for(lambda: not retired.alive(), timeout=30, what="the retired worker to stop")
    submit_job(cluster, "heartbeat", "true")
    # Paused: it never runs, and is not expected to (it has no period), so it never fires.
    submit_job(cluster, "on-hold", "true", paused=True)
    heartbeat = job_labels(cluster, "heartbeat")

    def runs(s: Scrape, outcome: str) -> float:
        return s.value("chronosync_runs_total", outcome=outcome) or 0

    # Healthy: a job succeeding every second on two workers. Nothing fires.
    first = scrape_when(cluster, lambda s: runs(s, "succeeded") >= 2 and s.value(
        "chronosync_job_last_success_timestamp_seconds", job_name="heartbeat")
        and s.value("chronosync_nodes", kind="worker", state="alive") == 2,
        "the heartbeat job's first successes in /metrics")
    healthy = scrape_when(cluster, lambda s: runs(s, "succeeded") >= runs(first, "succeeded")
                          + 3, "more successes in /metrics")
    check_alerts(tmp_path, "healthy", first, healthy, {})

    # A worker killed and seen dead, then a job failing every second: nodes dead and the
    # failure rate fire; the failing job is younger than its limit, so it does not yet.
    workers[0].signal(signal.SIGKILL)
    dead = scrape_when(cluster, lambda s: s.value("chronosync_nodes", kind="worker",
                                                  state="dead") == 1, "the worker seen dead")
    submit_job(cluster, "broken", "exit 1")
    broken = job_labels(cluster, "broken")
    failing = scrape_when(cluster, lambda s: runs(s, "exit") >= 2,
                          "the broken job's failures in /metrics")
    worker_dead = {"kind": "worker", "state": "dead", **TARGET}
    check_alerts(tmp_path, "failing", dead, failing, {
        "ChronoSyncNodesDead": [worker_dead],
        "ChronoSyncFailureRateHigh": [{}]})

    # No worker left: tasks fall due and wait. Once the oldest has waited past the limit
    # and the jobs' limits passed, the queue, the lost workers and both unpaused jobs
    # fire; with no live worker, no run is counted, so no rate fires.
    workers[1].signal(signal.SIGKILL)
    waiting = scrape_when(
        cluster, lambda s: s.value("chronosync_nodes", kind="worker", state="dead") == 2
        and (s.value("chronosync_queue_due_age_seconds") or 0) > OVERDUE_S + 5
        and s.at - (s.value("chronosync_job_last_success_timestamp_seconds",
                            job_name="heartbeat") or s.at) > OVERDUE_S + 5,
        "tasks due and unclaimed for a while", timeout=120)
    stalled = scrape_when(cluster, lambda s: s.at > waiting.at + 1, "a second scrape")
    check_alerts(tmp_path, "stalled", waiting, stalled, {
        "ChronoSyncNodesDead": [worker_dead],
        # absent() labels its one series with the selector's equalities.
        "ChronoSyncNoLiveWorkers": [{"kind": "worker", "state": "alive"}],
        "ChronoSyncTasksDueUnclaimed": [TARGET],
        "ChronoSyncJobNotSucceeded": [heartbeat, broken]})

    # A new worker runs what waited, late: lateness fires; the heartbeat job succeeds
    # again, the broken job still never has.
    cluster.start("worker")
    caught_up = scrape_when(
        cluster, lambda s: s.value("chronosync_queue_due_age_seconds") == 0
        and runs(s, "succeeded") > 0 and s.at - s.value(
            "chronosync_job_last_success_timestamp_seconds", job_name="heartbeat") < 5,
        "the new worker to run what waited")
    check_alerts(tmp_path, "caught-up", stalled, caught_up, {
        "ChronoSyncNodesDead": [worker_dead],
        "ChronoSyncFailureRateHigh": [{}],
        "ChronoSyncLatenessHigh": [{}],
        "ChronoSyncJobNotSucceeded": [broken]})


def test_the_webhook_alert_fires_when_a_delivery_is_given_up(cluster: Cluster,
                                                              tmp_path: Path) -> None:
    # Submissions may name the receiver; the coordinator no longer allows it, so the
    # delivery is given up at its first attempt (nothing listens there either).
    receiver = f"http://127.0.0.1:{free_port()}/"
    cluster.start("scheduler", CHRONOSYNC_WEBHOOK_ALLOW=receiver)
    cluster.start("coordinator", CHRONOSYNC_WEBHOOK_ALLOW=receiver + "elsewhere/")
    cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    given_up = "chronosync_webhook_deliveries_given_up_total"
    before = scrape_when(cluster, lambda s: s.value(given_up) == 0,
                         "the coordinator's give-ups at 0 in /metrics")
    steady = scrape_when(cluster, lambda s: s.at > before.at + 1, "a second scrape")
    check_alerts(tmp_path, "webhooks-healthy", before, steady, {})
    status, task = cluster.http("POST", "/schedule", {"command": "true", "webhooks": [
        {"url": receiver + "hooks", "events": ["succeeded"], "secret": "s" * 16}]})
    assert status == 201, task
    cluster.wait_task(task["id"], ("succeeded",))
    after = scrape_when(cluster, lambda s: s.value(given_up) == 1,
                        "the give-up counted in /metrics")
    assert after.value("chronosync_webhook_deliveries_given_up") == 1
    assert after.value("chronosync_webhook_deliveries_pending") == 0
    check_alerts(tmp_path, "webhooks-given-up", steady, after,
                 {"ChronoSyncWebhooksGivenUp": [{}]})


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"]
            for target in panel.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(?:chronosync|process)_[a-z_]+\b", expr))


def test_the_dashboard_reads_what_the_cluster_exposes_and_what_the_alerts_read(
        cluster: Cluster, tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert exprs and all(metric_names(e) for e in exprs), "a panel reads no ChronoSync figure"
    # Each query is valid PromQL: promtool checks it as a recording rule.
    checked = tmp_path / "dashboard-rules.yml"
    checked.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e.replace("$__rate_interval", "5m")}
        for i, e in enumerate(exprs)]}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(checked)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr

    # Every figure it reads is one a real cluster shows, with a job and a run or two.
    cluster.start_default(coordinators=1, workers=1)
    submit_job(cluster, "heartbeat", "true")
    read = set().union(*map(metric_names, exprs))
    shown = scrape_when(cluster, lambda s: s.value("chronosync_task_lateness_seconds_count")
                        and s.value("chronosync_job_last_success_timestamp_seconds"),
                        "a run's figures in /metrics")
    exposed = {name for name, _ in shown.samples}
    assert read <= exposed, f"the dashboard reads figures /metrics lacks: {read - exposed}"
    # And a panel for every figure an alert reads.
    alerted = set().union(*(metric_names(rule["expr"]) for rule in rules()))
    assert alerted <= read, f"no panel for {alerted - read}"
