"""The deployment files pass their tools, and agree with taskwarren and with each other.

deploy/check.sh runs the tools made for each file (hadolint, the Compose schema,
kubernetes-validate, and docker compose, kubectl and promtool where installed). The
rest of this module checks the facts those tools cannot know, because taskwarren owns
them: the worker command the image, compose and Kubernetes run (and that the CLI
accepts it), the stop grace periods against the worker's grace, the consumer timeout
stated to RabbitMQ and to the workers, the settings the workers get, the queue the
scaler watches, and the metric names, labels and series in the alerts and the
dashboard, taken from the package's metrics module rather than written out again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
import promql_parser
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from prometheus_client.metrics import MetricWrapperBase

from taskwarren.cli import load_app, main
from taskwarren.middleware import metrics
from taskwarren.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHECK = DEPLOY / "check.sh"

#: The least time a container gets, beyond the worker's grace, between SIGTERM and
#: SIGKILL: to hand back prefetched messages, send the last acks and close cleanly.
STOP_MARGIN_S = 10.0
#: The port rabbitmq_prometheus serves on (rabbitmq.conf, prometheus.yml).
RABBITMQ_METRICS_PORT = 15692
#: Labels Prometheus adds to every series it scrapes, beside the metric's own.
TARGET_LABELS = {"instance", "job", "pipeline"}


# --------------------------------------------------------------------------- loading


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(DEPLOY / "compose.yaml")
    return data


def compose_services(kind: str) -> dict[str, dict[str, Any]]:
    """Compose services that run the taskwarren ``worker``, or RabbitMQ (``rabbitmq``)."""
    services: dict[str, dict[str, Any]] = compose()["services"]
    if kind == "worker":
        return {n: s for n, s in services.items() if (s.get("command") or [""])[0] == "worker"}
    return {n: s for n, s in services.items() if str(s.get("image")).startswith("rabbitmq:")}


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def k8s_object(kind: str) -> dict[str, Any]:
    (found,) = [d for d in k8s_objects() if d["kind"] == kind]
    return found


def worker_pod() -> dict[str, Any]:
    pod: dict[str, Any] = k8s_object("Deployment")["spec"]["template"]
    return pod


def worker_container() -> dict[str, Any]:
    (container,) = worker_pod()["spec"]["containers"]
    return container


def interpolate(value: object) -> str:
    """A compose value with every ``${VAR...}`` replaced, as compose would with VAR=secret."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}", "secret", str(value))


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: interpolate(v) for k, v in service["environment"].items()}


def k8s_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables; one taken from a Secret gets the example Secret's value."""
    secret = k8s_object("Secret")["stringData"]
    env = {}
    for var in container["env"]:
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        env[var["name"]] = secret[ref["key"]] if ref else var["value"]
    return env


def rabbitmq_conf() -> dict[str, str]:
    """deploy/rabbitmq/rabbitmq.conf, whose lines are ``key = value`` or comments."""
    lines = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text(encoding="utf-8").splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def duration_s(value: str) -> float:
    """A compose duration such as ``45s`` or ``1m30s``, in seconds."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value)
    assert parts and value, f"not a duration compose.yaml uses: {value!r}"
    return 60.0 * int(parts[1] or 0) + int(parts[2] or 0)


class Dockerfile:
    """The final stage of the repository's Dockerfile, through dockerfile-parse."""

    def __init__(self, path: Path = ROOT / "Dockerfile") -> None:
        parser = DockerfileParser(str(path))
        self.instructions = [(i["instruction"], i["value"]) for i in parser.structure]
        last_from = max(n for n, (kind, _) in enumerate(self.instructions) if kind == "FROM")
        self.stages = sum(kind == "FROM" for kind, _ in self.instructions)
        self.final = self.instructions[last_from:]

    def last(self, kind: str) -> str:
        values = [value for k, value in self.final if k == kind]
        assert values, f"the runtime stage has no {kind}"
        return values[-1]

    def exec_form(self, kind: str) -> list[str]:
        """The JSON array of ENTRYPOINT, CMD or HEALTHCHECK (after its options and CMD)."""
        value: list[str] = json.loads(self.last(kind).split("CMD", 1)[-1])
        return value


# --------------------------------------------------------------------------- the tools


def run_check(root: Path) -> subprocess.CompletedProcess[str]:
    """deploy/check.sh on ``root``, with this Python's scripts (the tools) on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return subprocess.run(["bash", str(CHECK), str(root)], capture_output=True, text=True,
                          timeout=300, check=False, env=dict(os.environ, PATH=path))


def test_the_deploy_files_pass_the_tools_made_for_them() -> None:
    result = run_check(ROOT)

    assert result.returncode == 0, result.stdout + result.stderr
    for tool in ("hadolint", "check-jsonschema", "kubernetes-validate"):
        assert f"check: {tool} " in result.stdout
    assert "check: deployment files passed" in result.stdout


@pytest.fixture
def broken_copy(tmp_path: Path) -> Path:
    """A copy of the files deploy/check.sh checks, for a test to break."""
    shutil.copy2(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


@pytest.mark.parametrize(("file", "old", "new", "reported"), [
    ("Dockerfile", 'ENTRYPOINT ["taskwarren"]', "ENTRYPOINT taskwarren", "DL3025"),
    ("Dockerfile", "USER 10001:10001", "USER root", "DL3002"),
    ("deploy/compose.yaml", "  stop_grace_period: 45s", "  stop_grace: 45s",
     "'stop_grace' was unexpected"),
    ("deploy/k8s/deployment.yaml", "terminationGracePeriodSeconds:",
     "terminationGracePeriodSecond:", "terminationGracePeriodSecond"),
], ids=["shell-form entrypoint", "root user", "misspelt compose key", "misspelt k8s field"])
def test_the_deploy_check_fails_on_a_broken_file(
    broken_copy: Path, file: str, old: str, new: str, reported: str,
) -> None:
    _edit(broken_copy / file, old, new)

    result = run_check(broken_copy)

    assert result.returncode == 1, result.stdout
    assert reported in result.stdout + result.stderr
    assert "check: some deployment files failed" in result.stdout


# --------------------------------------------------------------------------- the worker


def parse_command_line(args: list[str]) -> click.Context:
    """The context the taskwarren CLI builds for ``taskwarren ARGS``, without running it."""
    parent = click.Context(main, info_name="taskwarren")
    command = main.get_command(parent, args[0])
    assert command is not None, f"taskwarren has no command {args[0]!r}"
    return command.make_context(args[0], args[1:], parent=parent)


def test_the_image_compose_and_kubernetes_run_one_worker_command_the_cli_accepts() -> None:
    image = Dockerfile()
    command = image.exec_form("CMD")
    container = worker_container()

    assert image.exec_form("ENTRYPOINT") == ["taskwarren"]
    assert "command" not in container, "Kubernetes must keep the image's ENTRYPOINT"
    assert container["args"] == command
    for name, service in compose_services("worker").items():
        assert service["command"] == command, name
    worker = parse_command_line(command).params
    assert worker["modules"] == ("workers.email_analysis.tasks",)
    assert load_app(list(worker["modules"]), None).tasks


def test_the_health_checks_run_the_health_command_of_the_cli() -> None:
    container = worker_container()
    probes = [container[p]["exec"]["command"]
              for p in ("startupProbe", "readinessProbe", "livenessProbe")]

    assert Dockerfile().exec_form("HEALTHCHECK") == ["taskwarren", "health"]
    assert probes == [["taskwarren", "health"]] * 3
    parse_command_line(["health"])


def test_the_metrics_port_the_worker_serves_is_the_one_exposed_and_scraped() -> None:
    port = parse_command_line(Dockerfile().exec_form("CMD")).params["metrics_port"]
    pod = worker_pod()
    jobs = {j["job_name"]: j for j in load_yaml(DEPLOY / "prometheus" / "prometheus.yml")[
        "scrape_configs"]}
    scraped = {t for c in jobs["taskwarren"]["static_configs"] for t in c["targets"]}
    rabbit_scraped = {t for c in jobs["rabbitmq"]["static_configs"] for t in c["targets"]}

    assert Dockerfile().last("EXPOSE") == str(port)
    assert [p["containerPort"] for p in worker_container()["ports"]] == [port]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert scraped == {f"{s['hostname']}:{port}" for s in compose_services("worker").values()}
    assert rabbitmq_conf()["prometheus.tcp.port"] == str(RABBITMQ_METRICS_PORT)
    assert rabbit_scraped == {f"{s['hostname']}:{RABBITMQ_METRICS_PORT}"
                              for s in compose_services("rabbitmq").values()}
    assert jobs["rabbitmq"]["metrics_path"] == "/metrics/per-object"  # per-queue series


def test_the_image_is_built_in_one_stage_and_runs_unprivileged_from_another() -> None:
    image = Dockerfile()
    copies = [value for kind, value in image.final if kind in ("COPY", "ADD")]
    pod_security = worker_pod()["spec"]["securityContext"]

    assert image.stages == 2
    assert copies == ["--from=build /opt/venv /opt/venv"]
    assert image.last("USER") == "10001:10001"
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (10001, 10001)
    assert pod_security["runAsNonRoot"] is True


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    sources = [word for kind, value in Dockerfile().instructions
               if kind == "COPY" and "--from=" not in value for word in value.split()[:-1]]
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line for line in lines if line and not line.startswith("#")]

    assert patterns[0] == "*", ".dockerignore lets in only what it names"
    for source in sources:
        assert (ROOT / source).exists(), source
        assert f"!{source.rstrip('/')}{'/' if (ROOT / source).is_dir() else ''}" in patterns


# --------------------------------------------------------------------------- settings, stop


def worker_envs() -> Iterator[tuple[str, dict[str, str]]]:
    for name, service in compose_services("worker").items():
        yield f"compose {name}", compose_env(service)
    yield "k8s email-worker", k8s_env(worker_container())


def test_taskwarren_accepts_the_settings_every_worker_gets() -> None:
    for where, env in worker_envs():
        settings = Settings.from_env(env)
        assert settings.queue_type == "quorum", where
        assert settings.url.count("amqp://") == 3, f"{where}: list every RabbitMQ node"


def test_the_containers_wait_longer_than_the_workers_grace_before_sigkill() -> None:
    pod = worker_pod()["spec"]
    grace_k8s = Settings.from_env(k8s_env(worker_container())).grace_s

    assert pod["terminationGracePeriodSeconds"] >= grace_k8s + STOP_MARGIN_S
    assert Dockerfile().last("STOPSIGNAL") == "SIGTERM"
    for name, service in compose_services("worker").items():
        grace = Settings.from_env(compose_env(service)).grace_s
        assert duration_s(service["stop_grace_period"]) >= grace + STOP_MARGIN_S, name
        assert service["stop_signal"] == "SIGTERM", name


def test_the_consumer_timeout_told_to_rabbitmq_is_the_one_the_workers_know() -> None:
    conf = rabbitmq_conf()
    cluster_conf = k8s_object("RabbitmqCluster")["spec"]["rabbitmq"]["additionalConfig"]
    (cluster_timeout,) = re.findall(r"^consumer_timeout\s*=\s*(\d+)$", cluster_conf, re.M)

    assert cluster_timeout == conf["consumer_timeout"]
    for where, env in worker_envs():
        assert "TASKWARREN_CONSUMER_TIMEOUT_S" in env, f"{where}: state it, do not default it"
        timeout_ms = Settings.from_env(env).consumer_timeout_s * 1000
        assert timeout_ms == int(conf["consumer_timeout"]), where
    # taskwarren sets x-queue-type on every queue; RabbitMQ 3.10 refuses the key.
    assert "default_queue_type" not in conf


def test_the_worker_pods_get_no_service_link_variables() -> None:
    # The operator's Service taskwarren-rabbitmq would inject TASKWARREN_RABBITMQ_*.
    assert worker_pod()["spec"].get("enableServiceLinks") is False


# --------------------------------------------------------------------------- RabbitMQ


def test_the_cluster_nodes_are_the_compose_services_and_every_worker_lists_them() -> None:
    nodes = {f"rabbit@{s['hostname']}" for s in compose_services("rabbitmq").values()}
    conf = rabbitmq_conf()

    assert len(nodes) == 3
    assert {v for k, v in conf.items() if k.startswith("cluster_formation.classic_config.")
            } == nodes
    for name, service in compose_services("worker").items():
        url = service["environment"]["TASKWARREN_URL"]
        hosts = {re.sub(r"^.*@|[:/].*$", "", part) for part in url.split(",")}
        assert {f"rabbit@{h}" for h in hosts} == nodes, name


def test_no_password_or_cookie_is_written_into_a_deploy_file() -> None:
    secret_value = re.compile(r"\$\{TW_[A-Z_]+:\?[^}]*\}")
    placeholder = re.compile(r"REPLACE_?ME|REPLACE_WITH")
    definitions = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())

    for name, service in {**compose_services("rabbitmq"), **compose_services("worker")}.items():
        env = service["environment"]
        for var in ("RABBITMQ_ERLANG_COOKIE", "RABBITMQ_DEFAULT_PASS"):
            assert var not in env or secret_value.fullmatch(env[var]), f"{name}: {var}"
        for url in env.get("TASKWARREN_URL", "").split(","):
            assert not url or secret_value.search(url.split("@")[0]), f"{name}: {url}"
    assert "value" not in {k for v in worker_container()["env"]
                           if v["name"] == "TASKWARREN_URL" for k in v}
    assert all(placeholder.search(v) for v in k8s_object("Secret")["stringData"].values())
    assert all(placeholder.search(u["password_hash"]) for u in definitions["users"])


def test_the_broker_definitions_leave_the_topology_to_taskwarren() -> None:
    definitions = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
    rabbit = next(iter(compose_services("rabbitmq").values()))["environment"]

    # A policy can override or add queue arguments behind taskwarren's back, and a
    # queue declared with other arguments makes taskwarren's own declaration fail.
    for kind in ("policies", "queues", "exchanges", "bindings"):
        assert definitions[kind] == [], kind
    assert [v["name"] for v in definitions["vhosts"]] == [rabbit["RABBITMQ_DEFAULT_VHOST"]]
    assert [p["vhost"] for p in definitions["permissions"]] == [rabbit["RABBITMQ_DEFAULT_VHOST"]]


# --------------------------------------------------------------------------- Kubernetes


def test_kubernetes_scales_pdb_protects_and_secrets_feed_the_worker_deployment() -> None:
    deployment, pod = k8s_object("Deployment"), worker_pod()
    scaled, auth = k8s_object("ScaledObject"), k8s_object("TriggerAuthentication")
    (trigger,) = scaled["spec"]["triggers"]
    secret = k8s_object("Secret")
    secret_refs = [(v["valueFrom"]["secretKeyRef"]["name"], v["valueFrom"]["secretKeyRef"]["key"])
                   for v in worker_container()["env"] if "valueFrom" in v]
    secret_refs += [(r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]]
    queues = {t.queue for t in load_app(["workers.email_analysis.tasks"], None).tasks.values()}
    labels = pod["metadata"]["labels"]

    assert trigger["metadata"]["queueName"] in queues
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert k8s_object("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= (
        labels.items())
    for name, key in secret_refs:
        assert name == secret["metadata"]["name"]
        assert key in secret["stringData"], f"secret.example.yaml has no {key}"


# --------------------------------------------------------------------------- metrics


def exported_series() -> dict[str, set[str]]:
    """Every series name the worker exports, with the labels it carries."""
    series: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        name, labels = metric._name, set(metric._labelnames)
        suffixes = {"counter": ["_total"], "gauge": [""],
                    "histogram": ["_bucket", "_sum", "_count"]}[metric._type]
        for suffix in suffixes:
            series[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def selectors(node: Any) -> Iterator[promql_parser.VectorSelector]:
    """Every vector selector in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    elif isinstance(node, promql_parser.MatrixSelector):
        yield node.vector_selector
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from selectors(arg)
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from selectors(node.lhs)
        yield from selectors(node.rhs)
    elif isinstance(node, promql_parser.AggregateExpr | promql_parser.ParenExpr
                    | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
        yield from selectors(node.expr)


def aggregations(node: Any) -> Iterator[promql_parser.AggregateExpr]:
    """Every ``sum by (...)`` and the like in a parsed PromQL expression."""
    if isinstance(node, promql_parser.AggregateExpr):
        yield node
    for child in ("expr", "lhs", "rhs"):
        if hasattr(node, child):
            yield from aggregations(getattr(node, child))
    for arg in getattr(node, "args", None) or []:
        yield from aggregations(arg)


#: Values for Grafana's variables, so that a dashboard query parses as PromQL.
GRAFANA_VALUES = {"__rate_interval": "1m", "__range": "1h", "__interval": "1m"}


def parse_query(expr: str) -> Any:
    """An alert's or a dashboard's query, parsed as PromQL (Grafana's variables filled in)."""
    return promql_parser.parse(
        re.sub(r"\$\{?(\w+)\}?", lambda m: GRAFANA_VALUES.get(m[1], ".*"), expr))


def metric_problems(expr: str, series: Mapping[str, set[str]]) -> list[str]:
    """What in ``expr`` selects a taskwarren series, or a label of one, that is not exported."""
    tree = parse_query(expr)
    problems = []
    for selector in selectors(tree):
        name = selector.name or ""
        if not name.startswith("taskwarren_"):
            continue  # RabbitMQ's and Prometheus's series are theirs to name
        if name not in series:
            problems.append(f"{name} is not a series taskwarren exports")
            continue
        for matcher in selector.matchers.matchers:
            if matcher.name not in series[name] | TARGET_LABELS:
                problems.append(f"{name} has no label {matcher.name}")
    for aggregation in aggregations(tree):
        inner = {s.name for s in selectors(aggregation.expr)}
        if aggregation.modifier is None or not inner <= series.keys():
            continue
        for label in aggregation.modifier.labels:
            if not all(label in series[n] | TARGET_LABELS for n in inner):
                problems.append(f"sum by ({label}) over {sorted(inner)}: no such label")
    return problems


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))}


def panels(within: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, those inside rows included."""
    for panel in within.get("panels", []):
        yield panel
        yield from panels(panel)


def queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every alert rule and every dashboard query."""
    for group in load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']}", str(rule["expr"])
    for file, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                yield f"{file} {panel['title']!r} {target['refId']}", target["expr"]


def test_alerts_and_dashboards_select_only_series_and_labels_the_worker_exports() -> None:
    series = exported_series()

    problems = [f"{where}: {p}" for where, expr in queries()
                for p in metric_problems(expr, series)]
    selected = {s.name for _, expr in queries() for s in selectors(parse_query(expr))}

    assert problems == []
    assert {"taskwarren_tasks_total", "taskwarren_task_duration_seconds_bucket"} <= selected


@pytest.mark.parametrize(("expr", "problem"), [
    ("sum(rate(taskwarren_task_totl[5m]))", "taskwarren_task_totl is not a series"),
    ("histogram_quantile(0.9, rate(taskwarren_task_duration_seconds[5m]))",
     "taskwarren_task_duration_seconds is not a series"),
    ('sum(taskwarren_tasks_in_flight{task="x"})', "taskwarren_tasks_in_flight has no label task"),
    ("sum by (task) (taskwarren_redeliveries_total)", "sum by (task) over"),
])
def test_a_series_or_label_the_worker_does_not_export_is_reported(
    expr: str, problem: str,
) -> None:
    problems = metric_problems(expr, exported_series())

    assert any(problem in p for p in problems), problems


def test_the_dashboard_uses_only_variables_it_defines() -> None:
    for file, dashboard in dashboards().items():
        defined = {v["name"] for v in dashboard["templating"]["list"]} | set(GRAFANA_VALUES)
        used = {m for panel in panels(dashboard) for t in panel.get("targets", [])
                for m in re.findall(r"\$\{?(\w+)", t["expr"])}
        assert used <= defined, file
