"""taskwarren's pytest plugin: loaded by its entry point, cheap to import, once only."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = "taskwarren.pytest_plugin"


def _env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), str(ROOT)])
    env["TASKWARREN_URL"] = "amqp://guest:guest@127.0.0.1:1/"  # never reached
    env.pop("PYTEST_ADDOPTS", None)
    return env


def test_the_package_declares_the_plugin_under_the_modules_own_name() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())

    assert project["project"]["entry-points"]["pytest11"] == {PLUGIN: PLUGIN}


def test_importing_the_plugin_imports_nothing_else_builds_no_app_and_warns_nothing() -> None:
    probe = textwrap.dedent(f"""
        import sys
        import pytest
        before = set(sys.modules)
        import {PLUGIN}
        print(sorted(set(sys.modules) - before))
        import taskwarren.app
        print(taskwarren.app._default_app)
    """)
    out = subprocess.run([sys.executable, "-W", "error", "-c", probe], env=_env(),
                         capture_output=True, text=True, timeout=60, check=True).stdout

    added, default_app = out.splitlines()
    # Not pydantic, structlog, amqp or the app: pytest loads the plugin in every run
    # wherever taskwarren is installed, and they cost about half a second.
    assert added == f"['taskwarren', {PLUGIN!r}]"
    assert default_app == "None"


def test_the_package_is_the_same_to_its_users_with_its_names_imported_on_first_use() -> None:
    probe = textwrap.dedent("""
        import taskwarren
        import taskwarren.task  # the module: taskwarren.task stays the decorator
        from taskwarren import Task, Warren, task
        from taskwarren.task import Task as TaskClass
        print(task is taskwarren.task, callable(task), Task is TaskClass, Warren.__name__)
        try:
            taskwarren.Warrne
        except AttributeError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-W", "error", "-c", probe], env=_env(),
                         capture_output=True, text=True, timeout=60, check=True).stdout

    assert out.splitlines() == ["True True True Warren",
                                "module 'taskwarren' has no attribute 'Warrne'"]


def _fake_install(site: Path) -> None:
    """What installing taskwarren leaves for pytest to find: its entry point."""
    info = site / "taskwarren_probe-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: taskwarren-probe\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[pytest11]\n{PLUGIN} = {PLUGIN}\n")


def test_a_project_gets_the_fixtures_from_the_entry_point_and_may_name_the_plugin_too(
    tmp_path: Path,
) -> None:
    _fake_install(tmp_path / "site")
    project = tmp_path / "project"
    project.mkdir()
    (project / "conftest.py").write_text(f"pytest_plugins = [{PLUGIN!r}]\n")
    (project / "shop.py").write_text(textwrap.dedent("""
        from taskwarren import task

        PAID: list[int] = []

        @task(queue="probe.shop", retries=2)
        def pay(order: int) -> None:
            PAID.append(order)
            if len(PAID) == 1:
                raise RuntimeError("card declined once")
    """))
    (project / "test_shop.py").write_text(textwrap.dedent("""
        import shop
        from taskwarren.app import default_app

        def test_a_payment_is_retried_and_made(taskwarren_memory):
            shop.pay.send(7)
            results = taskwarren_memory.run()
            assert [r.outcome for r in results] == ["retried", "succeeded"]
            assert shop.PAID == [7, 7]

        def test_the_default_app_has_its_own_broker_again():
            assert default_app()._broker is None  # not connected: the switch is undone
    """))

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider",
         "--rootdir", str(project), str(project)],
        cwd=project, env=_env(tmp_path / "site", project), capture_output=True, text=True,
        timeout=120, check=False)

    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout
