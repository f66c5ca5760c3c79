"""The taskwarren wheel holds the library only; the email pipeline is its own distribution.

Both wheels are built the way the Dockerfile builds them (``pip wheel --no-deps``) from
a clean copy of what it copies in (a ``build/`` left in the work tree by an earlier build
would otherwise end up in the wheel), without build isolation so that the test needs no
network: the ``test`` extra pins the setuptools the build uses.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path

import pytest

import taskwarren

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


#: Left out of the copies: what a build or a test run leaves behind.
_LEAVE_OUT = shutil.ignore_patterns("__pycache__", "build", "*.egg-info", "*.db*")


def build_wheel(tmp: Path, paths: list[str], project: str = ".") -> zipfile.ZipFile:
    """Copy ``paths`` (relative to the root), build the wheel of ``project`` among them."""
    source, out = tmp / "src", tmp / "wheels"
    source.mkdir()
    for rel in paths:
        if (ROOT / rel).is_dir():
            shutil.copytree(ROOT / rel, source / rel, ignore=_LEAVE_OUT)
        else:
            shutil.copy2(ROOT / rel, source / rel)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "--wheel-dir", str(out), str(source / project)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


def metadata(wheel: zipfile.ZipFile) -> Message:
    """The wheel's METADATA, parsed."""
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return HeaderParser().parsestr(wheel.read(name).decode())


def top_level_names(wheel: zipfile.ZipFile) -> set[str]:
    """What the wheel puts at the top of site-packages."""
    return {name.split("/", 1)[0] for name in wheel.namelist()}


def test_the_taskwarren_wheel_installs_no_top_level_workers_package(tmp_path: Path) -> None:
    # The whole build context of the Dockerfile, workers/ included.
    wheel = build_wheel(tmp_path, ["pyproject.toml", "README.md", "LICENSE", "taskwarren",
                                   "workers"])

    names = top_level_names(wheel)

    assert "workers" not in names
    assert {n for n in names if not n.endswith(".dist-info")} == {"taskwarren"}
    assert "taskwarren/py.typed" in wheel.namelist()
    # The dashboard's templates and assets are read from the package at run time.
    assert {"taskwarren/web/templates/base.html", "taskwarren/web/static/dashboard.css",
            "taskwarren/web/static/dashboard.js"} <= set(wheel.namelist())


def test_the_email_pipeline_wheel_registers_the_demo_command(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, ["workers"], project="workers")

    assert Path(wheel.filename or "").name.startswith("taskwarren_email-")
    assert "workers/email_analysis/tasks.py" in wheel.namelist()
    assert any(n.startswith("workers/email_analysis/sample_maildir/") for n in wheel.namelist())
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert "[taskwarren.commands]" in text
    assert "demo = workers.email_analysis.demo:demo_command" in text


def test_the_taskwarren_wheel_carries_the_license_and_the_package_version(
    tmp_path: Path
) -> None:
    wheel = build_wheel(tmp_path, ["pyproject.toml", "README.md", "LICENSE", "taskwarren"])

    meta = metadata(wheel)
    assert meta["Version"] == taskwarren.__version__
    assert meta["License-Expression"] == "MIT"
    assert meta["License-File"] == "LICENSE"
    (licence,) = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    assert wheel.read(licence) == (ROOT / "LICENSE").read_bytes()
    assert "Programming Language :: Python :: 3.13" in meta.get_all("Classifier", [])
    assert meta["Requires-Python"] == ">=3.11"


def test_the_license_file_is_the_mit_license_the_metadata_names() -> None:
    text = (ROOT / "LICENSE").read_text()

    assert text.startswith("MIT License\n\nCopyright (c) ")
    assert "taskwarren" in text.splitlines()[2]
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "MIT"
    # The email pipeline's wheel carries a copy (setuptools reads no file outside workers/).
    assert (ROOT / "workers" / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()


def test_the_email_pipeline_has_the_version_and_license_of_the_library(
    tmp_path: Path
) -> None:
    project = tomllib.loads((ROOT / "workers" / "pyproject.toml").read_text())["project"]
    assert project["version"] == taskwarren.__version__
    assert project["license"] == "MIT"

    wheel = build_wheel(tmp_path, ["workers"], project="workers")

    assert metadata(wheel)["Version"] == taskwarren.__version__
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel.namelist())
