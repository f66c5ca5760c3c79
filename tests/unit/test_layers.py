"""The package imports downward only, and exports exactly its public names."""

from __future__ import annotations

import ast
from pathlib import Path

import taskwarren

PACKAGE = Path(taskwarren.__file__).parent

#: Lower number = lower layer. A module may import only its own layer or below.
LAYERS = {
    "errors": 0, "settings": 1, "message": 1, "topology": 1, "retries": 1, "logs": 1,
    "brokers": 2, "task": 3, "app": 4, "middleware": 4, "testing": 5, "worker": 5, "cli": 6,
    "__init__": 6, "__main__": 7,
}


def layer_of(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def test_no_module_imports_a_layer_above_it() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        own = ".".join(rel.parts)
        tree = ast.parse(path.read_text())
        typing_only = {
            id(inner) for node in ast.walk(tree)
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue  # annotations only: no import at run time
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "taskwarren."
            ):
                target = node.module.removeprefix("taskwarren.")
                if layer_of(target) > layer_of(own):
                    upward.append(f"{own} -> {target}")
    assert upward == []


def test_only_the_rabbitmq_broker_imports_amqp() -> None:
    importers = sorted(
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
        if any(isinstance(n, ast.Import) and any(a.name == "amqp" for a in n.names)
               for n in ast.walk(ast.parse(p.read_text())))
    )
    assert importers == ["brokers/rabbitmq.py"]


def test_the_public_names_are_exactly_these() -> None:
    assert sorted(taskwarren.__all__) == sorted([
        "Backoff", "Retry", "SoftTimeLimitExceeded", "Task", "TaskwarrenError", "Warren",
        "__version__", "publish", "task",
    ])
    for name in taskwarren.__all__:
        assert getattr(taskwarren, name).__doc__ or name == "__version__", name
