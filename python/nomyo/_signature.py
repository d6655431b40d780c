"""``takes_arguments_of``: one signature for a method's sync and async twins.

The twins (``create``, ``send_secure_request``) take dozens of arguments that must stay
the same for both; they are written once, on the shared method that consumes them, and
each twin says it takes exactly those. Type checkers read the arguments through the
``ParamSpec``; ``inspect.signature`` and ``help()`` read them from ``__signature__``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

__all__ = ["same_arguments_as", "takes_arguments_of"]

P = ParamSpec("P")
R = TypeVar("R")


def takes_arguments_of(
    source: Callable[Concatenate[Any, P], Any],
) -> Callable[[Callable[..., R]], Callable[Concatenate[Any, P], R]]:
    """Give the decorated method the arguments (names, defaults, kinds) of ``source``,
    and its own return type."""
    return _with_arguments_of(source)


def same_arguments_as(
    source: Callable[P, Any],
) -> Callable[[Callable[..., R]], Callable[P, R]]:
    """:func:`takes_arguments_of` for functions: all of ``source``'s arguments."""
    return _with_arguments_of(source)


def _with_arguments_of(source: Callable[..., Any]) -> Callable[[Callable[..., R]], Any]:
    parameters = list(inspect.signature(source).parameters.values())

    def apply(function: Callable[..., R]) -> Callable[..., R]:
        returns = inspect.signature(function).return_annotation
        signature = inspect.Signature(parameters, return_annotation=returns)
        function.__signature__ = signature  # type: ignore[attr-defined]
        return function

    return apply
