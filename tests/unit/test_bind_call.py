"""A send's arguments bound without ``inspect`` when they plainly fit: the same
arguments as ``Signature.bind``, and its own error for every call that does not fit."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from taskwarren.options import bind_call, plain_call


def plain_and_keyword(a: int, b: int = 1, *, c: int, d: int = 2) -> None:
    """Positional-or-keyword and keyword-only parameters, with and without defaults."""


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((1,), {"c": 3}), ((1, 2), {"c": 3, "d": 4}), ((), {"a": 1, "c": 2}),
    ((1, 2, 3), {"c": 1}),  # too many positional arguments
    ((1,), {"a": 2, "c": 1}),  # a given twice
    ((1,), {"zz": 1, "c": 1}),  # unknown name
    ((1,), {}),  # c missing
    ((), {"c": 1}),  # a missing
]


def outcome(call: Any) -> Any:
    try:
        return call()
    except TypeError as exc:
        return ("TypeError", str(exc))


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_every_call_binds_as_inspect_binds_it(args: tuple[Any, ...],
                                              kwargs: dict[str, Any]) -> None:
    signature = inspect.signature(plain_and_keyword)
    plain = plain_call(signature)
    assert plain is not None

    assert outcome(lambda: bind_call(signature, plain, args, kwargs)) == outcome(
        lambda: dict(signature.bind(*args, **kwargs).arguments))


def test_positional_only_and_variadic_signatures_always_go_through_inspect() -> None:
    def positional_only(a: int, /, b: int) -> None: ...

    def variadic(*args: int, **kwargs: int) -> None: ...

    assert plain_call(inspect.signature(positional_only)) is None
    assert plain_call(inspect.signature(variadic)) is None
    assert bind_call(inspect.signature(positional_only), None, (1, 2), {}) == {"a": 1, "b": 2}
