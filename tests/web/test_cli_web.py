"""``taskwarren web``: serves the dashboard on 127.0.0.1:8080 by default, says so in one line
when the web extra is missing or the token is too short."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from taskwarren import cli_web
from taskwarren.cli import main
from taskwarren.store import open_store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_command_says_what_to_install_when_the_web_extra_is_missing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_web, "missing_web_modules", lambda: ["uvicorn"])

    result = CliRunner().invoke(main, ["web"])

    assert result.exit_code == 1
    assert result.output.strip() == ("Error: the dashboard needs the web extra (uvicorn "
                                     "missing): pip install 'taskwarren[web]'")


def test_a_token_that_is_too_short_stops_the_command_with_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKWARREN_URL", "memory://")
    monkeypatch.setenv("TASKWARREN_WEB_TOKEN", "short")

    result = CliRunner().invoke(main, ["web"])

    assert result.exit_code == 1
    assert "TASKWARREN_WEB_TOKEN is too short" in result.output
    assert "short'" not in result.output and "=short" not in result.output


def test_the_help_names_the_defaults() -> None:
    result = CliRunner().invoke(main, ["web", "--help"])

    assert "127.0.0.1" in result.output and "8080" in result.output


@pytest.mark.slow
def test_the_command_serves_the_dashboard_on_localhost(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    open_store(store).init()
    port = free_port()
    env = {**os.environ, "TASKWARREN_URL": "memory://", "TASKWARREN_STORE_URL": store}
    proc = subprocess.Popen([sys.executable, "-m", "taskwarren", "web", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    assert r.read() == b'{"status":"ok"}'
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/jobs", timeout=5) as r:
            assert b'data-testid="jobs-table"' in r.read()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "read-only" in err.decode()


@pytest.mark.parametrize(("given", "proxy_headers", "allowed"), [
    ([], False, None), (["--forwarded-allow-ips", "10.0.0.7"], True, "10.0.0.7")])
def test_forwarded_headers_are_believed_only_from_the_proxies_named(
        monkeypatch: pytest.MonkeyPatch, given: list[str], proxy_headers: bool,
        allowed: str | None) -> None:
    import uvicorn

    seen: dict[str, Any] = {}
    monkeypatch.setenv("TASKWARREN_URL", "memory://")
    monkeypatch.delenv("TASKWARREN_WEB_TOKEN", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))

    result = CliRunner().invoke(main, ["web", *given])

    assert result.exit_code == 0, result.output
    assert seen["proxy_headers"] is proxy_headers
    assert seen["forwarded_allow_ips"] == allowed
