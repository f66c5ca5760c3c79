"""Log set-up: what an operator's terminal shows of a failure."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import structlog
from taskwarren.logs import configure

configure("console")

def connect(url):
    password = "pa55-SECRET-word"
    raise ConnectionError("refused")

# Built apart from the call: Python 3.13 shows the source line of each frame, even of
# `python -c` code, and this test is about locals.
URL = "amqp://app:" + "pa55-SECRET-word" + "@host/"
try:
    connect(URL)
except ConnectionError:
    structlog.get_logger("t").exception("broker.failed")
"""


def test_console_tracebacks_never_show_local_variables_that_may_hold_a_password() -> None:
    # rich (in the test extra) would make structlog's console renderer print every
    # frame's locals, a password among them.
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=60)
    shown = re.sub(r"\x1b\[[0-9;]*m", "", out.stderr)
    assert "broker.failed" in shown
    assert "ConnectionError: refused" in shown
    assert "pa55-SECRET-word" not in shown


# -- logging the host application controls ------------------------------------------------

APP_LINES = """
import logging, sys
from taskwarren.logs import configure

configure(sys.argv[1], "INFO")
from taskwarren import Warren
from taskwarren.testing import join

app = Warren(url="memory://")

@app.task(queue="logs.q", name="logs.charge")
def charge() -> None:
    url = "amqp://shop:pa55-SECRET-word@broker.example/"
    raise ConnectionError(f"could not reach {url}")

charge.send()
join(app, fail_on_error=False, run_delayed=False)
logging.getLogger("myapp.billing").warning("invoice %s sent to %s", 7,
                                           "postgresql://bill:pa55-SECRET-word@db/")
try:
    raise RuntimeError("amqp://x:pa55-SECRET-word@h/ refused")
except RuntimeError:
    logging.getLogger("myapp.billing").exception("billing.failed")
"""


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=60)


def test_json_lines_render_taskwarren_s_and_the_app_s_lines_alike_without_passwords() -> None:
    import json

    out = _run(APP_LINES, "json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    ours = next(e for e in lines if e["event"] == "task.dead_lettered")
    theirs = next(e for e in lines if e["event"].startswith("invoice"))
    failed = next(e for e in lines if e["event"] == "billing.failed")
    assert ours["logger"] == "taskwarren.worker" and theirs["logger"] == "myapp.billing"
    assert {"timestamp", "level", "logger", "event"} <= ours.keys() & theirs.keys()
    assert ours["level"] == theirs["level"] == "warning"
    assert ours["task"] == "logs.charge" and ours["error_type"] == "ConnectionError"
    assert "shop:***@broker.example" in ours["error"]
    assert theirs["event"] == "invoice 7 sent to postgresql://bill:***@db/"
    assert "RuntimeError: amqp://x:***@h/ refused" in failed["exception"]
    assert "pa55-SECRET-word" not in out.stderr


def test_console_lines_render_both_alike_without_passwords() -> None:
    out = _run(APP_LINES, "console")
    assert out.returncode == 0, out.stderr
    shown = re.sub(r"\x1b\[[0-9;]*m", "", out.stderr)
    assert re.search(r"\[warning\s*\] task\.dead_lettered .*task=logs\.charge", shown)
    assert re.search(r"\[warning\s*\] invoice 7 sent to postgresql://bill:\*\*\*@db/", shown)
    assert "RuntimeError: amqp://x:***@h/ refused" in shown
    assert "pa55-SECRET-word" not in shown


OWN_HANDLER = """
import logging, sys
from taskwarren.logs import route_to_logging

class Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []
    def emit(self, record):
        self.records.append((record.name, record.levelname, self.format(record)))

keep = Keep()
keep.setFormatter(logging.Formatter("%(levelname)s|%(name)s|%(message)s"))
logging.getLogger().addHandler(keep)
logging.getLogger().setLevel(logging.INFO)
route_to_logging()

from taskwarren import Warren
from taskwarren.testing import join

app = Warren(url="memory://")

@app.task(queue="logs.own", name="logs.fail")
def fail() -> None:
    raise ValueError("nope, see amqp://u:pa55-SECRET-word@h/")

fail.send()
join(app, fail_on_error=False, run_delayed=False)
for name, level, text in keep.records:
    print(text)
"""


def test_the_app_s_own_stdlib_handler_receives_taskwarren_s_lines_as_readable_text() -> None:
    out = _run(OWN_HANDLER)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", "nothing written beside the app's handler"
    (line,) = [s for s in out.stdout.splitlines() if "task.dead_lettered" in s]
    assert line.startswith("WARNING|taskwarren.worker|task.dead_lettered ")
    assert "task='logs.fail'" in line and "error_type='ValueError'" in line
    assert "u:***@h/" in line and "pa55-SECRET-word" not in out.stdout


APP_MODULE = """
import logging

class Keep(logging.Handler):
    lines = []
    def emit(self, record):
        Keep.lines.append(f"{record.name}:{record.getMessage()}")

logging.getLogger().addHandler(Keep())

from taskwarren import task

@task(queue="logs.module")
def noop() -> None:
    pass
"""

LOADS = """
import logging, sys
from taskwarren.logs import HANDLER_NAME, configure
from taskwarren.cli_loading import load_app

configure("json", "INFO")
assert [h.get_name() for h in logging.getLogger().handlers] == [HANDLER_NAME]
load_app(["applog"], "memory://")
import applog, structlog
assert HANDLER_NAME not in [h.get_name() for h in logging.getLogger().handlers]
structlog.get_logger("taskwarren.worker").warning("task.retried", task="applog.noop")
print(applog.Keep.lines)
"""


def test_handlers_the_app_s_modules_set_up_win_over_the_command_s(tmp_path: Path) -> None:
    (tmp_path / "applog.py").write_text(APP_MODULE)
    out = subprocess.run([sys.executable, "-c", LOADS], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[\"taskwarren.worker:task.retried task='applog.noop'\"]"
    assert out.stderr == ""


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    import logging

    import structlog

    root = logging.getLogger()
    saved = (structlog.get_config(), list(root.handlers), root.level)
    yield
    structlog.configure(**saved[0])
    root.handlers[:] = saved[1]
    root.setLevel(saved[2])


@pytest.mark.usefixtures("_restore_logging")
def test_log_level_is_a_choice_and_log_format_json_or_console_on_the_worker() -> None:
    from click.testing import CliRunner

    from taskwarren.cli import main

    runner = CliRunner()
    bad = runner.invoke(main, ["worker", "m", "--log-level", "LOUD"])
    assert bad.exit_code == 2 and "'LOUD' is not one of" in bad.output
    bad = runner.invoke(main, ["--log-format", "auto", "queues", "q"])
    assert bad.exit_code == 2 and "'auto' is not one of 'json', 'console'" in bad.output
    for command in ("worker", "relay", "web"):
        shown = runner.invoke(main, [command, "--help"]).output
        assert "--log-format [json|console]" in shown and "--log-level" in shown
