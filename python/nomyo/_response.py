"""Replies: ``dict``/``list`` subclasses with attribute access and a repr that hides content.

A decrypted ``chat.completion`` is converted once into these classes; the strings are the
very objects the native parser made (nothing is copied). Both styles work::

    resp["choices"][0]["message"]["content"]   # the reference client's dict API
    resp.choices[0].message.content            # the official SDK's attribute API

``repr()``/``str()`` never show message content, tool-call arguments or reasoning, so a stray
``print(resp)`` or log line does not leak the conversation; ``resp.to_dict()`` gives plain
dicts and lists, and ``ResponseObject.repr_content = True`` turns the hiding off (debugging).

The official SDK's serialisers work too: ``model_dump()``, ``model_dump_json()``,
``to_json()``; and a reply built from plain data (a cached ``model_dump()``, JSON from disk)
wraps its nested objects, so ``ChatCompletion(cached).choices[0].message.content`` works, as
does ``ChatCompletion.model_validate(cached)``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal, TypeVar

__all__ = [
    "ChatCompletion",
    "ChatCompletionMessage",
    "ChatCompletionMessageToolCall",
    "Choice",
    "CompletionUsage",
    "FinishReason",
    "Function",
    "ResponseList",
    "ResponseObject",
    "to_response",
]

#: Why a choice stopped (the official SDK's ``Choice.finish_reason``).
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]

_T = TypeVar("_T")
#: Classes of the objects (or list items) under some keys of an object.
_Children = dict[str, type["ResponseObject"]]
_O = TypeVar("_O", bound="ResponseObject")

#: Keys whose values are conversation content; ``repr`` replaces them by a placeholder.
REDACTED_KEYS = frozenset(
    {
        "content",
        "arguments",
        "reasoning_content",
        "reasoning",
        "refusal",
        "audio",
        "annotations",
    }
)


class ResponseObject(dict[str, Any]):
    """A JSON object of a reply: a ``dict`` whose keys are also attributes.

    A missing key raises ``KeyError`` by item and ``AttributeError`` by attribute, except for
    the fields a subclass declares (annotations), which read as None when absent, as in the
    official SDK (``message.tool_calls`` is None when there are no tool calls).
    """

    __slots__ = ()

    #: Show content in ``repr()`` (off: a placeholder such as ``<redacted: 12 chars>``).
    repr_content: ClassVar[bool] = False
    #: Classes of the objects (or list items) under some keys.
    _children: ClassVar[_Children] = {}
    #: Declared fields: absent ones read as None.
    _declared: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """A ``dict`` built as ``dict(...)`` is; nested plain objects and arrays become reply
        objects (``Choice``, ``ChatCompletionMessage``, ...), so attribute access works on
        a reply rebuilt from cached data."""
        super().__init__(*args, **kwargs)
        children = type(self)._children
        for key, item in self.items():
            if isinstance(item, list) or (
                isinstance(item, dict) and not isinstance(item, ResponseObject)
            ):
                dict.__setitem__(self, key, _convert(item, children.get(key, ResponseObject)))

    @classmethod
    def model_validate(cls: type[_O], obj: Mapping[str, Any]) -> _O:
        """Build from plain data (as the official SDK's pydantic models do), e.g. a cached
        ``model_dump()``.

        Raises:
            TypeError: ``obj`` is not a mapping.
        """
        if not isinstance(obj, Mapping):
            raise TypeError(f"{cls.__name__}.model_validate needs a mapping, not {type(obj)}")
        return cls(obj)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names: set[str] = set()
        for klass in cls.__mro__:
            annotations = inspect.get_annotations(klass)
            names.update(n for n, t in annotations.items() if "ClassVar" not in str(t))
        cls._declared = frozenset(names)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            if name in type(self)._declared:
                return None
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute or key {name!r}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __dir__(self) -> Iterable[str]:
        return sorted({*super().__dir__(), *(k for k in self if isinstance(k, str))})

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_repr(self, ResponseObject.repr_content)})"

    def to_dict(self) -> dict[str, Any]:
        """A plain ``dict``/``list`` copy of the tree (the strings themselves are shared)."""
        return {k: _plain(v) for k, v in self.items()}

    def model_dump(
        self,
        *,
        mode: Literal["json", "python"] | str = "python",
        exclude_none: bool = False,
        exclude_unset: bool = False,
        by_alias: bool = False,
    ) -> dict[str, Any]:
        """A plain ``dict``/``list`` copy, as the official SDK's ``model_dump()``.

        ``exclude_none`` leaves out keys whose value is None (at every level);
        ``exclude_unset`` and ``by_alias`` are accepted for compatibility and change nothing
        (a reply holds exactly the keys that were sent, under their wire names).

        Raises:
            ValueError: ``mode`` is neither ``"python"`` nor ``"json"``.
        """
        if mode not in ("python", "json"):
            raise ValueError(f"mode must be 'python' or 'json', not {mode!r}")
        return _plain(self, drop_none=exclude_none)  # type: ignore[no-any-return]

    def model_dump_json(self, *, indent: int | None = None, exclude_none: bool = False) -> str:
        """The reply as JSON text, as the official SDK's ``model_dump_json()`` (compact
        unless ``indent`` is given; non-ASCII characters are written as they are)."""
        separators = (",", ":") if indent is None else None
        return json.dumps(
            self.model_dump(exclude_none=exclude_none),
            indent=indent,
            separators=separators,
            ensure_ascii=False,
        )

    def to_json(self, *, indent: int | None = 2, exclude_none: bool = False) -> str:
        """The reply as JSON text, indented by 2 by default (the official SDK's ``to_json``)."""
        return self.model_dump_json(indent=indent, exclude_none=exclude_none)


class ResponseList(list[_T]):
    """A JSON array of a reply, with the same content-hiding repr."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (list(self),))

    def __repr__(self) -> str:
        return _repr(self, ResponseObject.repr_content)

    def to_list(self) -> list[Any]:
        """A plain ``list``/``dict`` copy of the tree."""
        return [_plain(v) for v in self]


class Function(ResponseObject):
    """The function a tool call invokes; ``arguments`` is a JSON string."""

    __slots__ = ()
    name: str
    arguments: str


class ChatCompletionMessageToolCall(ResponseObject):
    """One tool call of a message."""

    __slots__ = ()
    id: str
    type: Literal["function"]
    function: Function
    _children: ClassVar[_Children] = {"function": Function}


class ChatCompletionMessage(ResponseObject):
    """The assistant's message."""

    __slots__ = ()
    role: Literal["assistant"]
    content: str | None
    refusal: str | None
    reasoning_content: str | None
    tool_calls: ResponseList[ChatCompletionMessageToolCall] | None
    function_call: Function | None
    audio: ResponseObject | None
    annotations: ResponseList[ResponseObject] | None
    _children: ClassVar[_Children] = {
        "tool_calls": ChatCompletionMessageToolCall,
        "function_call": Function,
    }


class Choice(ResponseObject):
    """One completion choice."""

    __slots__ = ()
    index: int
    message: ChatCompletionMessage
    finish_reason: FinishReason
    logprobs: ResponseObject | None
    _children: ClassVar[_Children] = {"message": ChatCompletionMessage}


class CompletionUsage(ResponseObject):
    """Token counts."""

    __slots__ = ()
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: ResponseObject | None
    completion_tokens_details: ResponseObject | None


class ChatCompletion(ResponseObject):
    """A decrypted ``chat.completion``: a ``dict`` (the reference client's return type) with
    the attribute access of the official SDK's ``ChatCompletion``.

    ``_metadata`` holds what the client and the router add (payload id, encryption, tier,
    TPM attestation); see PROTOCOL.md section 3.
    """

    __slots__ = ()
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: ResponseList[Choice]
    usage: CompletionUsage | None
    system_fingerprint: str | None
    service_tier: str | None
    _metadata: ResponseObject
    _children: ClassVar[_Children] = {
        "choices": Choice,
        "usage": CompletionUsage,
    }


def to_response(value: dict[str, Any], cls: type[_O]) -> _O:
    """Convert a decoded JSON object (and everything under it) into ``cls`` and friends."""
    return _convert_object(value, cls)


def _convert_object(value: dict[str, Any], cls: type[_O]) -> _O:
    return cls(value)  # dict's own copy; __init__ replaces nested objects and arrays


def _convert(value: Any, cls: type[ResponseObject]) -> Any:
    if isinstance(value, ResponseObject):
        return value
    if isinstance(value, dict):
        return _convert_object(value, cls)
    if isinstance(value, list):
        return ResponseList([_convert(item, cls) for item in value])
    return value


def _plain(value: Any, drop_none: bool = False) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v, drop_none) for k, v in value.items() if not (drop_none and v is None)}
    if isinstance(value, list):
        return [_plain(v, drop_none) for v in value]
    return value


def _placeholder(value: Any) -> str:
    if isinstance(value, str):
        return f"<redacted: {len(value)} chars>"
    if isinstance(value, list):
        return f"<redacted: {len(value)} items>"
    return "<redacted>"


def _repr(value: Any, show: bool) -> str:
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            if not show and key in REDACTED_KEYS and item is not None:
                parts.append(f"{key!r}: {_placeholder(item)}")
            else:
                parts.append(f"{key!r}: {_repr(item, show)}")
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_repr(item, show) for item in value) + "]"
    return repr(value)
