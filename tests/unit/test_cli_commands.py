"""Subcommands come from the ``taskwarren.commands`` entry points of installed distributions."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskwarren.cli import main
from taskwarren.commands import COMMANDS_GROUP


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path holding a distribution whose entry points a test writes."""
    dist_info = tmp_path / "taskwarren_hello-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: taskwarren-hello\n"
                                        "Version: 1.0\n")
    (tmp_path / "hello_commands.py").write_text(
        "import click\n"
        "@click.command()\n"
        "def hello() -> None:\n"
        "    '''Say hello.'''\n"
        "    click.echo('hello from a plugin')\n"
        "not_a_command = 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield dist_info
    sys.modules.pop("hello_commands", None)


def _register(dist_info: Path, lines: str) -> None:
    (dist_info / "entry_points.txt").write_text(f"[{COMMANDS_GROUP}]\n{lines}\n")


def test_a_command_an_installed_distribution_registers_is_listed_and_runs(
    installed: Path,
) -> None:
    _register(installed, "hello = hello_commands:hello")

    listing = CliRunner().invoke(main, ["--help"])
    run = CliRunner().invoke(main, ["hello"])

    assert re.search(r"^  hello +Say hello\.$", listing.output, re.MULTILINE)
    assert run.exit_code == 0, run.output
    assert run.output == "hello from a plugin\n"


def test_an_installed_command_cannot_replace_a_built_in_one(installed: Path) -> None:
    _register(installed, "worker = hello_commands:hello")

    result = CliRunner().invoke(main, ["worker", "--help"])

    assert result.exit_code == 0
    assert "Run a pool of worker processes" in result.output


def test_an_entry_point_that_is_not_a_click_command_is_reported_by_name(
    installed: Path,
) -> None:
    _register(installed, "broken = hello_commands:not_a_command")

    result = CliRunner().invoke(main, ["broken"])

    assert result.exit_code == 1
    assert "entry point broken = hello_commands:not_a_command is not a click command" in (
        result.output)


def test_taskwarren_demo_runs_from_the_installed_email_pipeline(tmp_path: Path) -> None:
    assert "demo" in {ep.name for ep in entry_points(group=COMMANDS_GROUP)}, (
        "the email pipeline is not installed: `make install` (pip install -e ./workers)")
    taskwarren = Path(sys.executable).with_name("taskwarren")

    result = subprocess.run(
        [str(taskwarren), "demo", "-n", "20", "-c", "1", "--workdir", str(tmp_path / "w")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": str(taskwarren.parent), "HOME": str(tmp_path)},
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "messages        20 (sent 20, stored 20)" in result.stdout
