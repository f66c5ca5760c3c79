"""The README's Sentry set-up, run as written, with an in-memory transport.

The recipe is read from README.md, so the README cannot drift from what is tested. It
runs in a process of its own: sentry_sdk.init patches process-wide hooks.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def recipe() -> str:
    """The README's Sentry code block."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Sentry"):]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    return block.group(1)


SCRIPT = """
import json, sys
import sentry_sdk
from sentry_sdk.transport import Transport
from taskwarren import Backoff, Warren
from taskwarren.testing import join

events = []

class InMemory(Transport):
    def capture_envelope(self, envelope):
        event = envelope.get_event()
        if event is not None:
            events.append(event)

real_init = sentry_sdk.init
def init(**options):  # the recipe's own init, sending to memory instead of sentry.io
    return real_init(transport=InMemory, default_integrations=False, **options)
sentry_sdk.init = init

SENTRY_DSN = "https://public@sentry.invalid/1"
app = Warren(url="memory://")
exec(sys.stdin.read())

@app.task(queue="sentry.q", name="sentry.charge", retries=1,
           backoff=Backoff(base_s=0.01, max_s=0.01))
def charge(n: int) -> None:
    # Joined at run time: Python 3.13 shows the source of -c code, and the event's
    # context lines may quote source; what must never show is the value, a local.
    url = "amqp://app:" + "pa55-SECRET" + "-word@broker/"
    raise RuntimeError(f"card declined for order {n}")

@app.task(queue="sentry.q", name="sentry.ok")
def ok() -> None:
    pass

charge.send(42)
ok.send()
results = join(app, fail_on_error=False)
sentry_sdk.flush()
print(json.dumps({"outcomes": sorted(r.outcome for r in results), "events": events},
                 default=str))
"""


def test_a_task_that_failed_for_good_is_one_sentry_event_with_its_tags_and_no_secret() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], input=recipe(), capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.splitlines()[-1])
    assert found["outcomes"] == ["dead_lettered", "retried", "succeeded"]
    (event,) = found["events"]  # the retried attempt is not reported, only the last
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert exception["value"] == "card declined for order 42"
    assert event["tags"] == {"taskwarren.task": "sentry.charge", "taskwarren.queue": "sentry.q",
                             "taskwarren.outcome": "dead_lettered"}
    assert event["contexts"]["taskwarren"]["attempt"] == 1
    frames = exception["stacktrace"]["frames"]
    assert frames[-1]["function"] == "charge" and "vars" not in frames[-1]
    assert "pa55-SECRET-word" not in out.stdout
