"""deploy/monitoring/ against real parts: promtool checks the rules and runs their unit tests, the
dashboard and rules use only metrics the service exposes, and a real Prometheus scraping the real
2-worker server answers every dashboard query and fires alerts on faults induced here."""

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import yaml

from harness.server import REPO_ROOT, ServerProcess, free_port
from serve import metrics
from serve.errors import StartupError
from serve.settings import Settings
from support.deploy_files import container_ports, container_settings, manifests, pod_template
from support.examples import ROWS
from support.served import wait_until

MONITORING_DIR = REPO_ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING_DIR / "dashboard.json"
ALERTS = MONITORING_DIR / "alerts.yaml"
ALERTS_TEST = MONITORING_DIR / "alerts.test.yaml"
SERVICE_MONITOR = MONITORING_DIR / "servicemonitor.yaml"

JOB = "crystal"  # the scrape job the rules select
# Grafana's variables as the test's Prometheus (1 s scrapes) can answer them.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$job": JOB}

# The service's metric contract as sample names: counters end in _total, histograms expose
# _bucket, _sum and _count.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
FAMILIES: dict[str, set[str]] = {
    family.name: {family.name + suffix for suffix in SUFFIXES[family.kind]}
    for family in metrics.FAMILIES
}
EXPOSED = set().union(*FAMILIES.values())
PROMETHEUS_OWN = {"up"}  # recorded by Prometheus for every target


T = TypeVar("T")


def require_prometheus() -> None:
    """Skips, saying why, where Debian's prometheus package is not installed."""
    missing = [tool for tool in ("promtool", "prometheus") if shutil.which(tool) is None]
    if missing:
        if shutil.which("apt-get"):
            how = "`make monitoring-tools` installs Debian's prometheus package (as root)"
        else:
            how = "apt-get is not available to install Debian's prometheus package"
        pytest.skip(f"{' and '.join(missing)} not on PATH: {how}")


def poll(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """The first truthy result of `check`, tried every 0.2 s until `timeout` seconds have passed."""
    return wait_until(check, what, timeout, every=0.2)


# --- reading the files ---------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def load_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "alert" in rule]


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads. Strings, label matchers, ranges and label lists
    go first; what is left that is neither a keyword nor followed by `(` names a metric."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    keywords = {"and", "or", "unless", "offset", "bool", "group_left", "group_right", "atan2"}
    keywords |= {"inf", "nan", "by", "without", "on", "ignoring"}
    names = set()
    for match in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        word, is_call = match.groups()
        if not is_call and word.lower() not in keywords:
            names.add(word)
    return names


def concrete(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by values Prometheus accepts."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


# --- static checks -------------------------------------------------------------------------------


def promtool(*args: str) -> str:
    """promtool's output; it must exit 0."""
    require_prometheus()
    result = subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_rules_pass_promtool_check() -> None:
    output = promtool("check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(load_rules())} rules found" in output


@pytest.mark.slow  # promtool runs every rule test: left out of make test-fast
def test_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(ALERTS_TEST))


def test_every_alert_has_for_severity_annotations_and_a_firing_and_a_silent_unit_test() -> None:
    cases = [
        case
        for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: no `for:`"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == name}
        assert outcomes == {True, False}, f"{name}: needs a firing and a silent case"


# A setting named with a number in an alert's text: "TIMEOUT (10 s)", "MAX_IN_FLIGHT, 16".
SETTING_WITH_NUMBER = re.compile(r"\b([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*)\b[\s,:=(]{1,3}(\d+(?:\.\d+)?)")


def flat_settings(settings: object, prefix: str = "") -> dict[str, object]:
    """Every field of the settings, nested ones (limits) as `limits.max_rows`."""
    fields: dict[str, object] = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if dataclasses.is_dataclass(value):
            fields |= flat_settings(value, f"{prefix}{field.name}.")
        else:
            fields[prefix + field.name] = value
    return fields


def numeric_default(name: str) -> float | None:
    """The default of the numeric setting `name`, found by setting it and seeing which field
    moves; None when `name` is not a numeric setting."""
    defaults = flat_settings(Settings.from_env({}))
    try:
        changed = flat_settings(Settings.from_env({name: "12345"}))
    except StartupError:
        return None
    moved = [field for field, value in changed.items() if value != defaults[field]]
    if len(moved) != 1:
        return None
    default = defaults[moved[0]]
    return float(default) if isinstance(default, int | float) else None


def test_numeric_default_is_read_from_the_settings() -> None:
    assert numeric_default("TIMEOUT") == Settings.from_env({}).timeout
    assert numeric_default("MAX_ROWS") == Settings.from_env({}).limits.max_rows
    assert numeric_default("LOG_PROBES") is None
    assert numeric_default("WORKER") is None


def test_settings_named_with_a_number_in_alert_texts_have_that_default() -> None:
    """An alert that says "TIMEOUT (10 s)" must be right about the default it tells on-call."""
    checked = []
    for rule in alert_rules():
        for key, text in rule["annotations"].items():
            for name, number in SETTING_WITH_NUMBER.findall(text):
                default = numeric_default(name)
                if default is None:
                    continue
                assert float(number) == default, (
                    f"{rule['alert']} {key} says {name} {number}, the default is {default:g}"
                )
                checked.append(name)
    assert "TIMEOUT" in checked  # CrystalWorkerRestarts names it


def test_dashboard_is_importable_and_every_panel_has_a_query() -> None:
    dashboard = load_dashboard()
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert dashboard["uid"] and dashboard["title"]
    source = {"type": "prometheus", "uid": "${datasource}"}
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{panel['title']}: empty query"
            assert target["datasource"] == source, panel["title"]
            # Every query is limited to the chosen job, so two deployments never mix.
            assert 'job=~"$job"' in target["expr"], f"{panel['title']}: not limited to $job"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'sum by (le) (rate(a_bucket{job=~"$job", le="0.6"}[5m])) / ignoring (label) group_left '
        'b_total offset 1d > 1e-3 and on (job) absent(up{job="x"} == 1) '
        "or histogram_quantile(0.5, c)"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "up", "c"}


def test_dashboard_and_rules_use_only_metrics_the_service_exposes() -> None:
    dashboard = load_dashboard()
    on_dashboard: set[str] = set()
    for _, expr in dashboard_queries(dashboard):
        on_dashboard |= metric_names(expr)
    for variable in dashboard["templating"]["list"]:
        on_dashboard |= set(
            re.findall(r"label_values\(\s*([\w:]+)", variable.get("definition", ""))
        )
    assert on_dashboard <= EXPOSED | PROMETHEUS_OWN, on_dashboard - EXPOSED - PROMETHEUS_OWN
    unshown = [family for family, names in FAMILIES.items() if not names & on_dashboard]
    assert not unshown, f"metrics with no panel: {unshown}"

    rules = load_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    in_rules = set().union(*(metric_names(rule["expr"]) for rule in rules))
    allowed = EXPOSED | PROMETHEUS_OWN | recorded
    assert in_rules <= allowed, in_rules - allowed


def test_service_monitor_scrapes_the_metrics_port_of_the_service() -> None:
    monitor = yaml.safe_load(SERVICE_MONITOR.read_text())
    service = manifests()["Service"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    # The Service port that forwards to the container's METRICS_PORT, by the port's name.
    template = pod_template()
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    target = ports[endpoint["port"]]["targetPort"]
    assert container_ports(template)[target] == container_settings(template).metrics_port
    assert endpoint["path"] == template["metadata"]["annotations"]["prometheus.io/path"]
    # The Prometheus Operator names the job after the Service: the job the rules select.
    assert service["metadata"]["name"] == JOB


# --- a real Prometheus scraping the real service -------------------------------------------------


def fast_rules() -> dict[str, Any]:
    """alerts.yaml with every `for:` cut to 1 s, so an alert fires seconds after its cause."""
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    return rules


class Prometheus:
    """The `prometheus` binary on a free loopback port, scraping one target every second and
    evaluating the rules every second; config, rules, data and log in `workdir`."""

    def __init__(self, workdir: Path, target: str):
        rules_file = workdir / "alerts.yaml"
        rules_file.write_text(yaml.safe_dump(fast_rules()))
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(rules_file)],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "prometheus.log"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 20.0) -> "Prometheus":
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()}")
            try:
                return requests.get(f"{self.url}/-/ready", timeout=2).ok
            except requests.ConnectionError:
                return False

        poll(ready, timeout, "prometheus ready")
        return self

    def api(self, path: str, **params: str) -> Any:
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def firing(self) -> set[str]:
        alerts = self.api("alerts")["alerts"]
        return {alert["labels"]["alertname"] for alert in alerts if alert["state"] == "firing"}

    def last_scrape(self) -> tuple[float, float] | None:
        """(time, value of up) of the last scrape of the service, or None before the first."""
        when = self.query(f'timestamp(up{{job="{JOB}"}})')
        value = self.query(f'up{{job="{JOB}"}}')
        if not when or not value:
            return None
        return float(when[0]["value"][1]), float(value[0]["value"][1])

    def wait_for_scrape_after(self, moment: float, timeout: float = 15.0) -> None:
        """Returns once a successful scrape started after `moment` (seconds since the epoch)."""

        def scraped() -> bool:
            last = self.last_scrape()
            return last is not None and last[0] > moment and last[1] == 1

        poll(scraped, timeout, f"a successful scrape of the service after {moment}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Stack:
    def __init__(self, server: ServerProcess, prometheus: Prometheus):
        self.server = server
        self.prometheus = prometheus
        self.ready_at = time.time()


# The stack's server asks for bearer tokens, so refusals have a sample too.
TOKEN = "monitoring-token-0123456789"


def send_traffic(url: str) -> None:
    """Valid predictions on every prediction endpoint, corrupt data (422), unknown paths (404),
    a request without a token (401)."""
    valid = [
        ("/sklearn", {"crystalData": ROWS}),
        ("/pytorch", {"crystalData": ROWS}),
        ("/astromech", {"crystalData": ROWS, "model": "sklearn"}),
        ("/astromech", {"crystalData": ROWS, "model": "pytorch"}),
    ]
    assert requests.post(url + "/sklearn", json=valid[0][1], timeout=10).status_code == 401
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        for _ in range(5):
            for path, body in valid:
                assert session.post(url + path, json=body, timeout=10).status_code == 200
            assert (
                session.post(url + "/sklearn", json={"crystalData": [[1]]}, timeout=10).status_code
                == 422
            )
            assert session.post(url + "/pytorch", data=b"{", timeout=10).status_code == 422
            assert session.get(url + "/no/such/path", timeout=10).status_code == 404


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The server and a Prometheus that has scraped two rounds of traffic: every counter the
    traffic touches has a sample before and after its last increase, so rates are positive."""
    require_prometheus()
    workdir = tmp_path_factory.mktemp("prometheus")
    with contextlib.ExitStack() as cleanup:
        tokens = workdir / "tokens"
        tokens.write_text(TOKEN + "\n")
        # As deployed: /metrics on a port of its own, scraped there.
        metrics_port = free_port()
        env = {"AUTH_TOKENS_FILE": str(tokens), "METRICS_PORT": str(metrics_port)}
        server = ServerProcess(env).wait_ready()
        cleanup.callback(server.stop)
        prometheus = Prometheus(workdir, f"127.0.0.1:{metrics_port}")
        cleanup.callback(prometheus.stop)
        prometheus.wait_ready()
        for _ in range(2):
            send_traffic(server.url)
            # Once every worker has published the traffic (each does every second).
            prometheus.wait_for_scrape_after(
                time.time() + Settings.from_env({}).metrics_flush_seconds
            )
        yield Stack(server, prometheus)


@pytest.mark.e2e
def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    without_data = []
    queries = dashboard_queries(load_dashboard())
    for title, expr in queries:
        values = [float(sample["value"][1]) for sample in stack.prometheus.query(concrete(expr))]
        if not any(math.isfinite(value) for value in values):
            without_data.append(f"{title}: {concrete(expr)}")
    assert not without_data, f"{len(without_data)} of {len(queries)} queries without data:\n" + (
        "\n".join(without_data)
    )
    # The $job variable lists the job the service is scraped as.
    jobs = stack.prometheus.query("group by (job) (crystal_requests_total)")
    assert {sample["metric"]["job"] for sample in jobs} == {JOB}


@pytest.mark.e2e
def test_rules_evaluate_on_live_data_and_stay_quiet_on_a_healthy_service(stack: Stack) -> None:
    names = {rule.get("alert") or rule["record"] for rule in load_rules()}

    def evaluated_twice_since_ready() -> list[dict[str, Any]] | None:
        groups = stack.prometheus.api("rules")["groups"]
        last = [datetime.fromisoformat(group["lastEvaluation"]).timestamp() for group in groups]
        return groups if groups and min(last) > stack.ready_at + 2 else None

    groups = poll(evaluated_twice_since_ready, 15, "every rule group evaluated twice")
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(rules) == names
    errors = {name: rule.get("lastError") for name, rule in rules.items() if rule["health"] != "ok"}
    assert not errors, errors
    recorded = [rule["record"] for rule in load_rules() if "record" in rule]
    assert all(stack.prometheus.query(name) for name in recorded), recorded
    assert stack.prometheus.firing() == set()


def worker_exits(prometheus: Prometheus) -> dict[str, float]:
    samples = prometheus.query(f'crystal_worker_exits_total{{job="{JOB}"}}')
    return {sample["metric"]["reason"]: float(sample["value"][1]) for sample in samples}


@pytest.mark.e2e
def test_a_reload_is_counted_but_fires_no_alert(stack: Stack) -> None:
    """A model release (SIGHUP) retires every worker: counted under reload, not a restart."""
    stack.server.process.send_signal(signal.SIGHUP)
    poll(
        lambda: worker_exits(stack.prometheus).get("reload") == 2,
        60,
        "the two retired workers scraped as reload",
    )
    seen = time.time()

    def evaluated_twice_since() -> bool:
        groups = stack.prometheus.api("rules")["groups"]
        last = [datetime.fromisoformat(group["lastEvaluation"]).timestamp() for group in groups]
        return bool(groups) and min(last) > seen + 2

    poll(evaluated_twice_since, 15, "every rule group evaluated twice after the reload")
    assert worker_exits(stack.prometheus) == {"reload": 2, "stop": 0, "timeout": 0, "crash": 0}
    assert "CrystalWorkerRestarts" not in stack.prometheus.firing()


@pytest.mark.e2e
def test_a_killed_worker_fires_the_restart_alert(stack: Stack) -> None:
    assert "CrystalWorkerRestarts" not in stack.prometheus.firing()
    os.kill(stack.server.worker_pids()[0], signal.SIGKILL)
    poll(
        lambda: "CrystalWorkerRestarts" in stack.prometheus.firing(),
        30,
        "CrystalWorkerRestarts firing after a worker was killed",
    )


@pytest.mark.e2e
def test_a_stopped_service_fires_target_down_and_unavailable(stack: Stack) -> None:
    expected = {"CrystalTargetDown", "CrystalUnavailable"}
    assert not expected & stack.prometheus.firing()
    assert stack.server.stop() == 0
    poll(
        lambda: expected <= stack.prometheus.firing(),
        20,
        f"{expected} firing after the service stopped",
    )
