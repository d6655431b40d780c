"""Request parameters: the ``NOT_GIVEN`` sentinel and the typed OpenAI arguments of ``create``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, final

__all__ = [
    "NOT_GIVEN",
    "OPENAI_PARAMETERS",
    "NotGiven",
    "SecurityTier",
    "given_parameters",
    "is_given",
]

#: The ``security_tier`` values the router knows.
SecurityTier = Literal["standard", "high", "maximum"]


@final
class NotGiven:
    """The default of optional ``create`` arguments: the argument is left out of the request.

    Distinct from None, which is sent as JSON ``null``::

        client.create(model, messages, temperature=NOT_GIVEN)  # no "temperature" key
        client.create(model, messages, temperature=None)       # "temperature": null
    """

    _instance: NotGiven | None = None

    def __new__(cls) -> NotGiven:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> Literal[False]:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __reduce__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven()

#: The typed OpenAI arguments of ``create`` (in the official SDK's order), put into the
#: request only when given.
OPENAI_PARAMETERS: Final = (
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "n",
    "parallel_tool_calls",
    "presence_penalty",
    "reasoning_effort",
    "response_format",
    "seed",
    "stop",
    "stream",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
)


def is_given(value: object) -> bool:
    """False for ``NOT_GIVEN`` (also the official SDK's ``NOT_GIVEN``/``omit`` sentinels)."""
    if value is NOT_GIVEN:
        return False
    cls = type(value)
    return not (cls.__name__ in ("NotGiven", "Omit") and cls.__module__.startswith("openai"))


def given_parameters(values: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The entries of ``values`` named in ``names`` whose value was given."""
    return {name: values[name] for name in names if is_given(values[name])}
