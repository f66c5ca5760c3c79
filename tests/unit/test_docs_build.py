"""The documentation site builds with warnings as errors, and shows what it promises.

The site (``mkdocs.yml``, ``docs/``, ``scripts/docs_hooks.py``) is built once, into a
temporary directory, with ``mkdocs build --strict``: a broken link, an unresolved
cross-reference, a docstring mkdocstrings cannot read, or a README section a page names
and README no longer has, fails it. The other tests read the pages it made.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

import taskwarren
from taskwarren import settings

ROOT = Path(__file__).resolve().parents[2]
#: The build takes a few seconds on the 2-core test machine; this catches one that
#: starts to crawl (a plugin fetching something, a hook looping) long before the
#: per-test timeout does.
MAX_BUILD_S = 60


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts/docs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(site: Path, config: Path = ROOT / "mkdocs.yml") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
         "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    started = time.monotonic()
    done = build(out)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    assert took < MAX_BUILD_S, f"the docs build took {took:.1f} s"
    return out


def page_text(site: Path, page: str) -> str:
    """The visible text of a page's article, tags removed."""
    source = (site / page / "index.html").read_text(encoding="utf-8")
    article = source[source.index("<article"):source.index("</article>")]
    return html.unescape(re.sub(r"<[^>]+>", "", article))


def test_every_setting_is_in_the_settings_table(site: Path) -> None:
    source = (site / "settings" / "index.html").read_text(encoding="utf-8")
    rows = re.findall(r"<tr>\s*<td><code>(TASKWARREN_\w+)</code></td>\s*<td><code>(\w+)</code>",
                      source)
    assert dict(rows) == settings._ENV_FIELDS
    assert set(settings.Settings.model_fields) == {keyword for _, keyword in rows}


def test_every_setting_shows_its_default_and_meaning_from_the_code(site: Path) -> None:
    text = page_text(site, "settings")
    assert "sqlite:///taskwarren.db" in text
    assert "a message that killed this many worker processes is dead-lettered" in text
    assert "≥ 10" in text  # schedule_catch_up_s's bound, from its Field


def test_the_api_reference_documents_every_public_name(site: Path) -> None:
    source = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    documented = set(re.findall(r'id="taskwarren\.([A-Za-z_]\w*)"', source))
    assert documented == set(taskwarren.__all__)
    # task() the function, not the module taskwarren.task it shadows.
    assert "Register a function as a task of the default app" in source
    assert ":meth:" not in source and ":class:" not in source


def test_every_command_is_in_the_command_line_reference(site: Path) -> None:
    from taskwarren.cli import main

    source = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    anchors = set(re.findall(r'<h\d id="(taskwarren[\w-]*)"', source))
    assert main.commands
    for name, command in main.commands.items():
        assert f"taskwarren-{name}" in anchors
        for sub in getattr(command, "commands", {}):
            assert f"taskwarren-{name}-{sub}" in anchors


def test_every_metric_and_alert_is_listed(site: Path) -> None:
    metrics = page_text(site, "operations/metrics")
    for name in ("taskwarren_tasks_total", "taskwarren_child_restarts_total",
                 "taskwarren_publish_confirm_seconds"):
        assert name in metrics
    alerts = page_text(site, "operations/alerts")
    rules = re.findall(r"- alert: (\w+)",
                       (ROOT / "deploy/prometheus/alerts.yml").read_text(encoding="utf-8"))
    assert rules
    for rule in rules:
        assert rule in alerts


def test_no_directive_is_left_in_any_page(site: Path) -> None:
    pages = list(site.rglob("*.html"))
    assert len(pages) > 20
    for page in pages:
        source = page.read_text(encoding="utf-8")
        assert "<!-- readme:" not in source and "<!-- generated:" not in source, page


def test_every_readme_section_is_on_the_site(site: Path) -> None:
    hooks = _hooks()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    everything = "\n".join(p.read_text(encoding="utf-8") for p in site.rglob("*.html"))
    text = html.unescape(re.sub(r"<[^>]+>", "", everything))
    for name, body in hooks.sections(readme).items():
        if name in hooks.README_ONLY:
            continue
        first = next(line for line, prose in hooks._lines_outside_fences(body)
                     if prose and re.match(r"(- )?[A-Za-z*`]", line))
        words = " ".join(re.sub(r"\*\*|`|^- ", "", first).split()[:6])
        assert words in text, f"README section {name!r} is not on the site"


def test_the_dashboard_screenshots_are_on_the_site(site: Path) -> None:
    source = (site / "concepts" / "dashboard" / "index.html").read_text(encoding="utf-8")
    images = re.findall(r'<img alt="[^"]*" src="([^"]+)"', source)
    assert len(images) == 4
    for image in images:
        assert (site / "concepts" / "dashboard" / image).resolve().is_file(), image


def test_a_page_naming_a_readme_section_that_does_not_exist_fails_the_build(
        tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text('# x\n\n<!-- readme: section="No such section" -->\n')
    config = tmp_path / "mkdocs.yml"
    config.write_text(f"site_name: x\ndocs_dir: {docs}\nhooks:\n"
                      f"  - {ROOT / 'scripts/docs_hooks.py'}\n")
    done = build(tmp_path / "site", config)
    assert done.returncode != 0
    assert "README.md has no section 'No such section'" in done.stdout + done.stderr


def test_directives_take_sections_topics_and_items() -> None:
    hooks = _hooks()
    readme = ("# t\n\n## One\n\nintro\n\n### Sub\n\n**Alpha.** a\nstill a\n\n```\n## not\n```\n\n"
              "**Beta.** b\n\n- first item\n  more\n- second\n\n## Two\n\nlast\n")
    assert hooks.extract(readme, "section", "Two") == "last"
    one = hooks.extract(readme, "section", "One")
    assert one is not None and "## Sub" in one and "## not" in one
    assert hooks.extract(readme, "topic", "Alpha.") == "**Alpha.** a\nstill a\n\n```\n## not\n```"
    assert hooks.extract(readme, "item", "first") == "- first item\n  more"
    assert hooks.extract(readme, "section", "Three") is None
    assert hooks.topics(readme) == ["Alpha.", "Beta."]


def test_readme_configuration_table_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(TASKWARREN_\w+)` \| `(\w+)` \|", readme, re.MULTILINE)
    assert dict(rows) == settings._ENV_FIELDS


def test_every_docstring_in_the_package_reads_as_google_style(
        caplog: pytest.LogCaptureFixture) -> None:
    """What mkdocstrings would warn about on any page that documents a module of ours:
    a documented parameter the signature lacks, a section it cannot parse."""
    import griffe

    package = griffe.load("taskwarren", search_paths=[str(ROOT)], resolve_aliases=False)
    seen: set[str] = set()

    def parse(obj: griffe.Object) -> int:
        if obj.path in seen:
            return 0
        seen.add(obj.path)
        count = 0
        if obj.docstring is not None:
            obj.docstring.parse("google")
            count += 1
        for member in obj.members.values():
            if isinstance(member, griffe.Object):
                count += parse(member)
        return count

    with caplog.at_level("WARNING", logger="griffe"):
        parsed = parse(package)
    assert parsed > 500
    assert [r.getMessage() for r in caplog.records] == []


def test_readme_links_are_made_to_work_on_the_site() -> None:
    hooks = _hooks()
    hooks.ANCHORS.update({"async-tasks": "concepts/async-tasks.md",
                          "run-it": "migrating/jobs-table.md#run-it"})
    fixed = hooks._fix_links(
        "[async](#async-tasks) [run](#run-it) [gone](#nowhere) ![s](docs/screenshots/a.png) "
        "[bench](benchmarks/README.md) [x](https://example.org/y)", "concepts/tasks.md")
    assert fixed == ("[async](async-tasks.md) [run](../migrating/jobs-table.md#run-it) gone "
                     "![s](../screenshots/a.png) bench (`benchmarks/README.md`) "
                     "[x](https://example.org/y)")
