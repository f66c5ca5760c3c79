"""The package imports downward only, never the application, and exports exactly its names."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import taskwarren

PACKAGE = Path(taskwarren.__file__).parent

#: Lower number = lower layer. A module may import only its own layer or below.
LAYERS = {
    "errors": 0, "urls": 1, "settings": 1, "message": 1, "topology": 1, "retries": 1, "logs": 1,
    "cron": 1, "text": 1, "tracing": 1, "management": 2,
    "brokers": 2, "store": 2, "options": 3, "task": 3, "app": 4, "middleware": 4, "jobs": 4,
    "testing": 5, "worker": 5, "commands": 5, "relays": 5,
    "schedules": 5, "pools": 5, "otel": 5,
    "cli": 6, "web": 6, "cli_topology": 6, "cli_store": 6, "cli_loading": 6, "cli_jobs": 6,
    "cli_schedules": 6, "cli_web": 6, "cli_queues": 6,
    "__init__": 6, "__main__": 7, "pytest_plugin": 6, "contrib": 7,
}


def layer_of(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def _fixed_name(call: ast.Call) -> str | None:
    """The module a call imports by a fixed name: ``importlib.import_module("x")``,
    ``import_module("x")`` or ``__import__("x")``; None for any other call, and for an
    import of a name chosen at run time (such as a module named on the command line)."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not call.args:
        return None
    first = call.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imports_at_run_time(path: Path) -> Iterator[str]:
    """Every module ``path`` imports by name, outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner) for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue  # annotations only: no import at run time
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Call) and (name := _fixed_name(node)) is not None:
            yield name


def _own_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def test_no_module_imports_a_layer_above_it() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        own = _own_name(path)
        for module in imports_at_run_time(path):
            if module.startswith("taskwarren."):
                target = module.removeprefix("taskwarren.")
                if layer_of(target) > layer_of(own):
                    upward.append(f"{own} -> {target}")
    assert upward == []


def test_the_library_never_imports_the_email_application() -> None:
    importers = sorted(
        f"{_own_name(path)} -> {module}" for path in PACKAGE.rglob("*.py")
        for module in imports_at_run_time(path)
        if module == "workers" or module.startswith("workers.")
    )
    assert importers == []


def test_imports_by_a_fixed_name_through_importlib_count_as_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import importlib\n"
        "from importlib import import_module\n"
        "importlib.import_module('workers.email_analysis.demo')\n"
        "import_module('taskwarren.cli')\n"
        "__import__('json')\n"
        "importlib.import_module(name)\n"  # a name chosen at run time: not counted
    )
    assert sorted(imports_at_run_time(source)) == [
        "importlib", "importlib", "json", "taskwarren.cli", "workers.email_analysis.demo",
    ]


def _imports_amqp(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(
                a.name == "amqp" or a.name.startswith("amqp.") for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "amqp" or node.module.startswith("amqp.")):
            return True
    return False


def test_only_the_rabbitmq_broker_imports_amqp() -> None:
    importers = sorted(
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
        if _imports_amqp(ast.parse(p.read_text()))
    )
    assert importers
    assert all(path.startswith("brokers/rabbitmq/") for path in importers), importers


def test_only_the_rabbitmq_errors_module_names_amqp_exceptions() -> None:
    naming = sorted(
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
        if "amqp.exceptions" in p.read_text() or "amqp import exceptions" in p.read_text()
    )
    assert naming == ["brokers/rabbitmq/errors.py"]


def test_the_public_names_are_exactly_these() -> None:
    assert sorted(taskwarren.__all__) == sorted([
        "Backoff", "Middleware", "Retry", "SoftTimeLimitExceeded", "Task", "TaskRun",
        "TaskwarrenError", "Warren", "__version__", "cancel_requested", "publish", "task",
    ])
    for name in taskwarren.__all__:
        assert getattr(taskwarren, name).__doc__ or name == "__version__", name


#: The longest a module may be: past it, it asks to be split (issue 11).
MAX_MODULE_LINES = 400


def test_no_module_is_longer_than_400_lines() -> None:
    long = sorted(
        f"{path.relative_to(PACKAGE)}: {n}" for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    )
    assert long == []
