"""Log set-up: what an operator's terminal shows of a failure."""

from __future__ import annotations

import re
import subprocess
import sys

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
