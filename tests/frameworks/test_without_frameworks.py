"""taskwarren without Django or FastAPI installed: everything but the Django modules
imports, and ``db=`` still tells connections apart without importing Django."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent("""
    import importlib, pkgutil, sqlite3, sys
    for name in ("django", "fastapi"):
        sys.modules[name] = None  # as if not installed: importing it raises ImportError
    import taskwarren
    failed = []
    for info in pkgutil.walk_packages(taskwarren.__path__, "taskwarren."):
        if info.name == "taskwarren.__main__":
            continue  # it runs the command line
        try:
            importlib.import_module(info.name)
        except ImportError:
            failed.append(info.name)
    from taskwarren.store.outbox import check_db
    print(check_db(sqlite3.connect(":memory:")))
    print(sorted(failed))
""")


def test_only_the_django_modules_need_django_and_nothing_needs_fastapi() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-W", "error", "-c", PROBE], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout

    kind, failed = out.splitlines()
    assert kind == "sqlite"
    assert failed == str(sorted([
        "taskwarren.contrib.django.apps",
        "taskwarren.contrib.django.management.commands.taskwarren_worker",
        "taskwarren.contrib.django.middleware",
    ]))
