"""Request parameters: the ``NOT_GIVEN`` sentinel, the OpenAI arguments of ``create``
(listed once, in :class:`OpenAIParameters`) and the options of one call
(:class:`RequestOptions`)."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, TypeAlias, TypedDict, final

if TYPE_CHECKING:
    import httpx

__all__ = [
    "NOT_GIVEN",
    "OPENAI_PARAMETERS",
    "REQUEST_OPTIONS",
    "CreateArguments",
    "NotGiven",
    "OpenAIParameters",
    "RequestArguments",
    "RequestOptions",
    "SecurityTier",
    "SplitArguments",
    "TimeoutTypes",
    "create_signature",
    "is_given",
    "split_arguments",
]

#: A client's or a call's ``timeout=``: seconds, an ``httpx.Timeout``, or None (httpx is
#: imported only where the httpx transport is used).
TimeoutTypes: TypeAlias = "float | httpx.Timeout | None"

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


class OpenAIParameters(TypedDict, total=False):
    """THE list of the OpenAI arguments of ``create`` (as in the official SDK), but
    ``stream``, which each ``create`` spells out (it decides what the call returns).

    Each goes into the encrypted request body only when given (``NOT_GIVEN`` leaves it
    out, None is sent as null); :data:`OPENAI_PARAMETERS` and the signature of ``create``
    are derived from it, so a parameter is either here or not taken at all.
    """

    frequency_penalty: float | NotGiven | None
    logit_bias: Mapping[str, int] | NotGiven | None
    logprobs: bool | NotGiven | None
    max_completion_tokens: int | NotGiven | None
    max_tokens: int | NotGiven | None
    n: int | NotGiven | None
    parallel_tool_calls: bool | NotGiven
    presence_penalty: float | NotGiven | None
    reasoning_effort: str | NotGiven | None
    response_format: Mapping[str, Any] | NotGiven
    seed: int | NotGiven | None
    stop: str | Sequence[str] | NotGiven | None
    temperature: float | NotGiven | None
    tool_choice: str | Mapping[str, Any] | NotGiven
    tools: Iterable[Mapping[str, Any]] | NotGiven
    top_logprobs: int | NotGiven | None
    top_p: float | NotGiven | None
    user: str | NotGiven


class RequestArguments(TypedDict, total=False):
    """The keywords of ``create`` that configure the call instead of going into its body:
    the fields of :class:`RequestOptions` (a test keeps the two in step)."""

    security_tier: SecurityTier | str | None
    api_key: str | None
    base_url: str | None
    extra_body: Mapping[str, Any] | None
    timeout: TimeoutTypes | NotGiven
    max_retries: int | NotGiven
    extra_headers: Mapping[str, str | None] | None
    extra_query: Mapping[str, object] | None
    payload_id: str | None


class CreateArguments(OpenAIParameters, RequestArguments, total=False):
    """Every keyword of ``create`` but ``stream`` (typed ``**kwargs``)."""


#: The OpenAI arguments of ``create`` in the official SDK's (alphabetical) order.
OPENAI_PARAMETERS: Final = tuple(sorted((*OpenAIParameters.__annotations__, "stream")))


@dataclass(frozen=True)
class RequestOptions:
    """The options of one call (``create``'s keywords that are not sent in the body), as
    openai-python's ``FinalRequestOptions``: the pipeline reads them from here.

    A new per-call option is a field here and an entry in :class:`RequestArguments`
    (``create`` then takes it), and is read where the pipeline uses it.
    """

    security_tier: str | None = None
    api_key: str | None = None
    base_url: str | None = None
    extra_body: Mapping[str, Any] | None = None
    timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    max_retries: int | NotGiven = NOT_GIVEN
    extra_headers: Mapping[str, str | None] | None = None
    extra_query: Mapping[str, object] | None = None
    #: The request's ``X-Payload-ID`` (printable ASCII), e.g. to find it in the router's
    #: logs; None: a fresh UUID.
    payload_id: str | None = None


#: The names of :class:`RequestOptions`, in order.
REQUEST_OPTIONS: Final = tuple(f.name for f in fields(RequestOptions))
_OPENAI_NAMES = frozenset(OPENAI_PARAMETERS)
_OPTION_NAMES = frozenset(REQUEST_OPTIONS)


class SplitArguments(NamedTuple):
    """The keywords of one ``create`` call, sorted: the given OpenAI parameters, the
    call's options, and any other keyword (sent in the body untouched)."""

    parameters: dict[str, Any]
    options: RequestOptions
    other: dict[str, Any]


def split_arguments(kwargs: Mapping[str, Any]) -> SplitArguments:
    """Sort ``create``'s keywords (see :class:`SplitArguments`); a ``NOT_GIVEN`` OpenAI
    parameter is left out."""
    parameters: dict[str, Any] = {}
    options: dict[str, Any] = {}
    other: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in _OPENAI_NAMES:
            if is_given(value):
                parameters[name] = value
        elif name in _OPTION_NAMES:
            options[name] = value
        else:
            other[name] = value
    return SplitArguments(parameters, RequestOptions(**options), other)


def create_signature(owner_parameters: Sequence[inspect.Parameter]) -> list[inspect.Parameter]:
    """The keyword-only parameters of ``create`` after ``owner_parameters`` (``self``,
    ``model``, ``messages``): every OpenAI parameter (default ``NOT_GIVEN``), every
    request option (its default), and ``**kwargs`` (for ``help()`` and ``inspect``)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    hints = {**OpenAIParameters.__annotations__, "stream": "bool | NotGiven | None"}
    defaults = {f.name: f.default for f in fields(RequestOptions)}
    out = list(owner_parameters)
    for name in OPENAI_PARAMETERS:
        hint = _hint(hints[name])
        out.append(inspect.Parameter(name, keyword, default=NOT_GIVEN, annotation=hint))
    for name in REQUEST_OPTIONS:
        hint = _hint(RequestArguments.__annotations__[name])
        out.append(inspect.Parameter(name, keyword, default=defaults[name], annotation=hint))
    out.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD, annotation="Any"))
    return out


def _hint(annotation: object) -> str:
    """A TypedDict entry's annotation as text (a ``ForwardRef`` under postponed
    evaluation)."""
    return str(getattr(annotation, "__forward_arg__", annotation))


def is_given(value: object) -> bool:
    """False for ``NOT_GIVEN`` (also the official SDK's ``NOT_GIVEN``/``omit`` sentinels)."""
    if value is NOT_GIVEN:
        return False
    cls = type(value)
    return not (cls.__name__ in ("NotGiven", "Omit") and cls.__module__.startswith("openai"))
