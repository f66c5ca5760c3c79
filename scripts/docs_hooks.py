"""MkDocs hooks: the site's pages take their text from README.md and from the code.

README.md stays the user's entry point and the one place prose is written; a page
under ``docs/`` names what it shows with a directive on a line of its own, which this
hook replaces with the text at build time, so the site cannot drift from README or
from the code:

- ``<!-- readme: section="Dashboard" -->``: a ``##`` section of README.md, without its
  heading (the page has its own); its sub-headings move up one level.
- ``<!-- readme: topic="Task." -->``: a paragraph that opens with ``**Task.**``, up to
  the next paragraph that opens with a bold label, or a heading.
- ``<!-- readme: paragraph="Settings come from" -->``: the paragraph opening with it.
- ``<!-- readme: item="`dlq list`" -->``: the list item (``- ...``) opening with it.
- ``<!-- readme: rest="Concepts" -->``: every topic of that section that no page shows
  with ``topic=``, under a heading "Other topics" (nothing when every topic has a page).
- ``<!-- readme: covers="Configuration" -->``: nothing; says a page shows that section
  in parts, so it gets no page of its own.
- ``<!-- file: path="deploy/README.md" -->``: a whole Markdown file of the repository,
  its ``#`` title dropped (the page has its own).
- ``<!-- generated: settings -->``, ``metrics``, ``alerts``: tables built from
  ``taskwarren/settings.py``, ``taskwarren/middleware/metrics.py`` and
  ``deploy/prometheus/alerts.yml``; ``api``: the mkdocstrings block that documents
  exactly the names in ``taskwarren.__all__``.

A directive whose text is not found stops the build (a README heading renamed without
its page). Every ``##`` section of README.md that no page shows gets a page of its own
(under the nav group ``PLACES`` names, else "More"), so a section added to README
appears on the site.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # mkdocs needs PyYAML; its stubs are not here
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

#: The repository's root: mkdocs.yml sits there.
ROOT = Path(__file__).resolve().parent.parent
#: README sections the site leaves out: they are about this repository, not the library.
README_ONLY = frozenset({"The two commands", "Development"})
#: Where the page made for a README section that no page claims goes: its nav group and
#: folder (the sections issue 16 adds to README have their place here); any other such
#: section goes to "More".
PLACES = {
    "Async tasks": ("Concepts", "concepts"),
    "Tracing": ("Operations", "operations"),
    "Logging": ("Operations", "operations"),
    "Testing your tasks": ("Guides", "guides"),
    "Django": ("Guides", "guides"),
    "FastAPI": ("Guides", "guides"),
}
#: The nav group and folder of any other unclaimed section.
MORE = ("More", "more")

_DIRECTIVE_RE = re.compile(r"^<!-- (readme|file|generated): ?(.*?) -->$", re.MULTILINE)
_HEADING_RE = re.compile(r"^(#{1,6}) ", re.MULTILINE)
_LABEL_RE = re.compile(r"^\*\*[^*\n]+\*\*")
_FENCE_RE = re.compile(r"^\s*(```|~~~)")


# --- README parsing ---------------------------------------------------------------


def _lines_outside_fences(text: str) -> list[tuple[str, bool]]:
    """Each line of ``text`` with whether it is prose (outside a fenced code block)."""
    out, fenced = [], False
    for line in text.split("\n"):
        if _FENCE_RE.match(line):
            out.append((line, False))
            fenced = not fenced
            continue
        out.append((line, not fenced))
    return out


def sections(text: str) -> dict[str, str]:
    """README's ``##`` sections: heading text -> body (without the heading line)."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line, prose in _lines_outside_fences(text):
        if prose and line.startswith("## "):
            current = found.setdefault(line[3:].strip(), [])
            continue
        if prose and line.startswith("# "):
            current = None
            continue
        if current is not None:
            current.append(line)
    return {name: "\n".join(body).strip("\n") for name, body in found.items()}


def _shift_headings(text: str, levels: int) -> str:
    """Move every heading outside code blocks up ``levels`` levels (``###`` -> ``##``)."""
    out = []
    for line, prose in _lines_outside_fences(text):
        match = _HEADING_RE.match(line) if prose else None
        if match and len(match[1]) > levels + 1:
            line = line[levels:]
        out.append(line)
    return "\n".join(out)


def _block(text: str, start: str, ends: Callable[[str, str], bool]) -> str | None:
    """The lines of ``text`` from the first prose line that starts with ``start`` up to,
    not including, the first later line for which ``ends(line, previous_line)`` holds."""
    lines = _lines_outside_fences(text)
    for i, (line, prose) in enumerate(lines):
        if prose and line.startswith(start):
            block = [line]
            for j in range(i + 1, len(lines)):
                later, later_prose = lines[j]
                if later_prose and ends(later, lines[j - 1][0]):
                    break
                block.append(later)
            return "\n".join(block).strip("\n")
    return None


def _topic_ends(line: str, previous: str) -> bool:
    return line.startswith("#") or (previous.strip() == "" and bool(_LABEL_RE.match(line)))


def _paragraph_ends(line: str, previous: str) -> bool:
    return line.strip() == ""


def _item_ends(line: str, previous: str) -> bool:
    return line.strip() == "" or line.startswith("- ")


def extract(readme: str, kind: str, value: str) -> str | None:
    """The README text a ``readme:`` directive names, or None if there is none."""
    if kind == "section":
        body = sections(readme).get(value)
        return None if body is None else _shift_headings(body, 1)
    if kind == "topic":
        return _block(readme, f"**{value}**", _topic_ends)
    if kind == "paragraph":
        return _block(readme, value, _paragraph_ends)
    if kind == "item":
        return _block(readme, f"- {value}", _item_ends)
    return None


def _arguments(raw: str) -> dict[str, str]:
    args = {}
    for word in shlex.split(raw):
        key, sep, value = word.partition("=")
        if not sep:
            raise PluginError(f"docs directive: {raw!r}: expected key=\"value\"")
        args[key] = value
    return args


def claimed(docs_dir: Path, what: str) -> set[str]:
    """The values of every ``readme:`` directive of kind ``what`` under ``docs_dir``."""
    found = set()
    for page in docs_dir.rglob("*.md"):
        for kind, raw in _DIRECTIVE_RE.findall(page.read_text(encoding="utf-8")):
            if kind == "readme":
                args = _arguments(raw)
                if what in args:
                    found.add(args[what])
    return found


def claimed_sections(docs_dir: Path) -> set[str]:
    """The README sections that pages under ``docs_dir`` show, whole or in parts."""
    return claimed(docs_dir, "section") | claimed(docs_dir, "rest") | claimed(docs_dir, "covers")


def topics(text: str) -> list[str]:
    """The labels of the bold-labelled paragraphs in ``text`` (``Task.`` for ``**Task.**``)."""
    out, previous = [], ""
    for line, prose in _lines_outside_fences(text):
        match = _LABEL_RE.match(line) if prose and previous.strip() == "" else None
        if match:
            out.append(match[0][2:-2])
        previous = line
    return out


def rest(readme: str, section: str, docs_dir: Path) -> str | None:
    """The topics of a README section that no page shows with ``topic=``."""
    body = sections(readme).get(section)
    if body is None:
        return None
    shown = claimed(docs_dir, "topic")
    blocks = [_block(body, f"**{label}**", _topic_ends) or ""
              for label in topics(body) if label not in shown]
    if not blocks:
        return ""
    return "## Other topics\n\n" + "\n\n".join(blocks)


# --- links ------------------------------------------------------------------------


def _anchors(readme: str, pages: dict[str, str]) -> dict[str, str]:
    """README's in-page anchors (``#async-tasks``) -> where they are on the site.

    ``pages`` maps a section to the page that shows it whole; a section's own anchor
    leads to its page, the anchors of its sub-headings to the page and heading.
    """
    from markdown.extensions.toc import slugify  # type: ignore[import-untyped]

    out = {}
    for name, body in sections(readme).items():
        page = pages.get(name)
        if page is None:
            continue
        out[slugify(name, "-")] = page
        for line, prose in _lines_outside_fences(body):
            if prose and line.startswith("### "):
                anchor = slugify(line.lstrip("#").strip(), "-")
                out[anchor] = f"{page}#{anchor}"
    return out


#: README anchor -> page path (and anchor) on the site; filled in ``on_files``.
ANCHORS: dict[str, str] = {}


def _fix_links(text: str, page_path: str) -> str:
    """README's links are relative to the repository root; make them work on the site.

    Links into ``docs/`` become links relative to the page, and README anchors
    (``#async-tasks``) links to the page that shows that section (the text alone when no
    page shows it whole). A link to any other file of the repository
    (``benchmarks/README.md``) is not part of the site: it becomes its text and the
    file's path, as code. Web links stay as they are.
    """
    page_dir = posixpath.dirname(page_path)

    def relink(match: re.Match[str]) -> str:
        label, target = match[1], match[2]
        if target.startswith("docs/"):
            return f"{label}({posixpath.relpath(target[len('docs/'):], page_dir or '.')})"
        text = label[label.index("[") + 1:-1]
        if target.startswith("#"):
            where = ANCHORS.get(target[1:])
            if where is None:
                return text
            path, _, anchor = where.partition("#")
            if path == page_path:
                return f"{label}(#{anchor})" if anchor else text
            rel = posixpath.relpath(path, page_dir or ".")
            return f"{label}({rel}{'#' + anchor if anchor else ''})"
        if re.match(r"[a-z][a-z0-9+.-]*:|/", target):
            return f"{label}({target})"
        return f"{text} (`{target}`)" if text.strip("`") != target else f"`{target}`"

    return re.sub(r"(!?\[[^\]]*\])\(([^)\s]+)\)", relink, text)


# --- generated tables -------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def settings_table() -> str:
    """Every setting, from :class:`taskwarren.settings.Settings` and its docstring."""
    from annotated_types import Ge, Gt

    from taskwarren import settings

    meaning = _attribute_docs(settings.Settings.__doc__ or "")
    rows = ["| variable | `Warren(...)` keyword | type | default | meaning |",
            "| --- | --- | --- | --- | --- |"]
    fields = settings.Settings.model_fields
    for variable, name in settings._ENV_FIELDS.items():
        info = fields[name]
        kind = _type_name(info.annotation)
        bounds = [f"≥ {m.ge}" for m in info.metadata if isinstance(m, Ge)]
        bounds += [f"> {m.gt}" for m in info.metadata if isinstance(m, Gt)]
        if bounds:
            kind += ", " + ", ".join(bounds)
        default = "none" if info.default is None else f"`{info.default}`"
        if name not in meaning:
            raise PluginError(f"Settings.{name} has no line in the Settings docstring")
        rows.append(f"| `{variable}` | `{name}` | {_cell(kind)} | {default} | "
                    f"{_cell(meaning[name])} |")
    missing = set(fields) - set(settings._ENV_FIELDS.values())
    if missing:
        raise PluginError(f"settings without a TASKWARREN_* variable: {sorted(missing)}")
    return "\n".join(rows)


def _type_name(annotation: Any) -> str:
    args = getattr(annotation, "__args__", ())
    if getattr(annotation, "__origin__", None) is not None and all(
            isinstance(a, str) for a in args):  # Literal["quorum", "classic"]
        return " or ".join(f"`{a}`" for a in args)
    text = getattr(annotation, "__name__", None) or str(annotation)
    return " or ".join(f"`{part}`" for part in text.replace("NoneType", "None").split(" | "))


def _attribute_docs(doc: str) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style docstring: name -> text."""
    out: dict[str, str] = {}
    inside, current, out_indent = False, None, 0
    for line in doc.split("\n"):
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        match = re.match(r"\s*(\w+): (.*)", line)
        if match and (current is None or indent <= out_indent):
            current, out_indent = match[1], indent
            out[current] = match[2]
        elif current is not None and indent > out_indent:
            out[current] += " " + line.strip()
        else:
            break
    return {k: re.sub(r":(?:func|class|meth|mod|data):`~?([^`]+)`", r"`\1`", v)
            for k, v in out.items()}


def metrics_table() -> str:
    """Every Prometheus metric a worker pool serves, from the metrics middleware."""
    from prometheus_client.metrics import MetricWrapperBase

    from taskwarren.middleware import metrics

    rows = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + ("_total" if value._type == "counter" else "")
            labels = ", ".join(f"`{label}`" for label in value._labelnames) or "none"
            rows.append(f"| `{name}` | {value._type} | {labels} | "
                        f"{_cell(value._documentation)} |")
    return "\n".join(rows)


def alerts_table() -> str:
    """Every alert rule in deploy/prometheus/alerts.yml."""
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    rows = ["| alert | severity | for | when | what it means |",
            "| --- | --- | --- | --- | --- |"]
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            note = rule.get("annotations", {})
            text = note.get("summary", "") + (" " + note["description"]
                                              if "description" in note else "")
            rows.append(f"| `{rule['alert']}` | {rule.get('labels', {}).get('severity', '')} | "
                        f"{rule.get('for', '')} | `{' '.join(rule['expr'].split())}` | "
                        f"{_cell(text)} |")
    return "\n".join(rows)


def api_block() -> str:
    """The mkdocstrings blocks for ``taskwarren``, its members exactly ``__all__``.

    Members without a docstring of their own (attributes a class docstring describes)
    are left out, except the names of ``__all__`` themselves (``__version__``).
    """
    import taskwarren

    names = sorted(taskwarren.__all__)
    documented = [n for n in names if getattr(taskwarren, n).__doc__ is not None
                  and not isinstance(getattr(taskwarren, n), str)]
    members = "".join(f"\n        - {name}" for name in documented)
    blocks = ["::: taskwarren\n    options:\n      show_root_heading: false\n"
              "      show_submodules: false\n      members_order: alphabetical\n"
              f"      filters: [\"!^_[^_]\"]\n      members:{members}\n"]
    blocks += [f"::: taskwarren.{name}\n    options:\n      show_if_no_docstring: true\n"
               "      show_root_full_path: true\n      heading_level: 2\n"
               for name in names if name not in documented]
    return "\n".join(blocks)


GENERATED = {"settings": settings_table, "metrics": metrics_table, "alerts": alerts_table,
             "api": api_block}


# --- mkdocs events ----------------------------------------------------------------


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def _unclaimed(config: MkDocsConfig) -> dict[str, tuple[str, str]]:
    """README sections no page shows: heading -> (nav group, path of the page made)."""
    docs_dir = Path(config.docs_dir)
    claimed = claimed_sections(docs_dir)
    out = {}
    for name in sections(_readme()):
        if name in claimed or name in README_ONLY:
            continue
        group, folder = PLACES.get(name, MORE)
        path = f"{folder}/{_slug(name)}.md"
        if (docs_dir / path).exists():
            group, path = MORE[0], f"{MORE[1]}/{_slug(name)}.md"
        out[name] = (group, path)
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Use this checkout's taskwarren, and give unclaimed README sections a nav entry."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if config.nav is None:
        return config
    for name, (group, path) in _unclaimed(config).items():
        entries = next((item[group] for item in config.nav
                        if isinstance(item, dict) and group in item), None)
        if entries is None:
            entries = []
            config.nav.append({group: entries})
        entries.append({name: path})
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Make a page for each README section that no page shows; map README's anchors."""
    pages = {}
    for name, (_, path) in _unclaimed(config).items():
        files.append(File.generated(config, path, content=(
            f"# {name}\n\n<!-- readme: section=\"{name}\" -->\n")))
        pages[name] = path
    for page in Path(config.docs_dir).rglob("*.md"):
        for kind, raw in _DIRECTIVE_RE.findall(page.read_text(encoding="utf-8")):
            section = _arguments(raw).get("section") if kind == "readme" else None
            if section is not None:
                pages[section] = page.relative_to(config.docs_dir).as_posix()
    ANCHORS.clear()
    ANCHORS.update(_anchors(_readme(), pages))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Replace each directive with the text it names."""
    readme: str | None = None
    src = page.file.src_uri

    def expand(match: re.Match[str]) -> str:
        nonlocal readme
        kind, raw = match[1], match[2]
        if kind == "generated":
            maker = GENERATED.get(raw.strip())
            if maker is None:
                raise PluginError(f"{src}: no generated table {raw.strip()!r}")
            return maker()
        args = _arguments(raw)
        if kind == "file":
            text = (ROOT / args["path"]).read_text(encoding="utf-8")
            return re.sub(r"\A# .*\n", "", text).strip("\n")
        if readme is None:
            readme = _readme()
        [(what, value)] = args.items()
        if what == "covers":
            return ""
        if what == "rest":
            found = rest(readme, value, Path(config.docs_dir))
        else:
            found = extract(readme, what, value)
        if found is None:
            raise PluginError(f"{src}: README.md has no {what} {value!r}; if README renamed "
                              f"or removed it, change or drop that line of docs/{src}")
        return _fix_links(found, src)

    return _DIRECTIVE_RE.sub(expand, markdown)
