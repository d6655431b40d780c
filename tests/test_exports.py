"""The public surface: exports, the reference client's import paths, exceptions, signatures."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from chat_support import HELLO, sync_chat

import nomyo
from nomyo import _core
from nomyo._client import SecureCompletionClient
from nomyo.testing import RouterThread

EXPECTED_ALL = [
    "NOT_GIVEN",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncStream",
    "AuthenticationError",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "ChatCompletionMessageToolCall",
    "Choice",
    "ChoiceDelta",
    "ChoiceDeltaFunctionCall",
    "ChoiceDeltaToolCall",
    "ChoiceDeltaToolCallFunction",
    "ChunkChoice",
    "ClientClosedError",
    "CompletionUsage",
    "ConfigurationError",
    "EnvelopeError",
    "FinishReason",
    "ForbiddenError",
    "Function",
    "InvalidRequestError",
    "KeyFormatError",
    "NomyoError",
    "NotGiven",
    "PrivateKey",
    "PublicKey",
    "RateLimitError",
    "RateLimitPolicy",
    "RateLimiter",
    "RequestTooLargeError",
    "ResponseList",
    "ResponseObject",
    "SecureBuffer",
    "SecureChatCompletion",
    "SecureCompletionClient",
    "SecureMemoryError",
    "SecurityError",
    "ServerError",
    "ServiceUnavailableError",
    "Stream",
    "SyncSecureChatCompletion",
    "SyncSecureCompletionClient",
    "configure_logging",
    "disable_core_dumps",
    "disable_secure_memory",
    "enable_secure_memory",
    "get_memory_protection_info",
    "openai_async_http_client",
    "openai_http_client",
    "secure_bytearray",
    "secure_bytes",
]

#: nomyo 0.2.9's __all__ (when its SecureMemory imports, as it does on Linux/macOS/Windows).
REFERENCE_ALL = [
    "SecureChatCompletion",
    "SecurityError",
    "APIError",
    "AuthenticationError",
    "InvalidRequestError",
    "APIConnectionError",
    "ForbiddenError",
    "RateLimitError",
    "ServerError",
    "ServiceUnavailableError",
    "get_memory_protection_info",
    "disable_secure_memory",
    "enable_secure_memory",
    "secure_bytearray",
    "secure_bytes",
    "SecureBuffer",
]

API_ERRORS = {
    "InvalidRequestError": 400,
    "AuthenticationError": 401,
    "ForbiddenError": 403,
    "RateLimitError": 429,
    "ServerError": 500,
    "ServiceUnavailableError": 503,
    "RequestTooLargeError": 413,
}
NOT_API_ERRORS = [
    "SecurityError",
    "SecureMemoryError",
    "APIConnectionError",
    "APITimeoutError",
    "EnvelopeError",
    "KeyFormatError",
    "ConfigurationError",
    "ClientClosedError",
]
VALUE_ERRORS = ["EnvelopeError", "KeyFormatError", "ConfigurationError"]


# --- exports ----------------------------------------------------------------------------------


def test_all_is_pinned() -> None:
    assert list(nomyo.__all__) == EXPECTED_ALL
    assert len(set(nomyo.__all__)) == len(nomyo.__all__)


def test_every_exported_name_exists() -> None:
    namespace: dict[str, Any] = {}
    exec("from nomyo import *", namespace)  # the star import itself is under test
    for name in EXPECTED_ALL:
        assert getattr(nomyo, name) is namespace[name]
    assert isinstance(nomyo.__version__, str)
    assert nomyo.__version__


def test_reference_exports_are_a_subset() -> None:
    assert set(REFERENCE_ALL) <= set(nomyo.__all__)


def run_python(code: str) -> None:
    """Run code in a fresh interpreter (importing ``nomyo.SecureCompletionClient`` in this
    process would rebind ``nomyo.SecureCompletionClient`` for every later test)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_reference_import_paths() -> None:
    run_python(
        """
        from nomyo import (
            SecureChatCompletion, SecurityError, APIError, AuthenticationError,
            InvalidRequestError, APIConnectionError, ForbiddenError, RateLimitError,
            ServerError, ServiceUnavailableError, get_memory_protection_info,
            enable_secure_memory, disable_secure_memory, secure_bytearray, SecureBuffer,
        )
        from nomyo.SecureCompletionClient import SecureCompletionClient
        from nomyo._client import SecureCompletionClient as Implementation
        assert SecureCompletionClient is Implementation
        client = SecureCompletionClient()
        assert client.router_url == "https://api.nomyo.ai"
        assert callable(get_memory_protection_info) and callable(secure_bytearray)
        """
    )


def test_reference_submodules_reexport_the_same_objects() -> None:
    run_python(
        """
        import sys
        import nomyo._client, nomyo._exceptions, nomyo._memory
        from nomyo.SecureCompletionClient import SecureCompletionClient
        import nomyo.SecureMemory as sm
        # The package attribute nomyo.SecureCompletionClient is the class (see the next test);
        # the reference's module path is the submodule in sys.modules, used by from-imports.
        scc = sys.modules["nomyo.SecureCompletionClient"]
        assert scc.SecureCompletionClient is nomyo._client.SecureCompletionClient
        for name in ("SecurityError", "APIError", "AuthenticationError", "InvalidRequestError",
                     "APIConnectionError", "ForbiddenError", "RateLimitError", "ServerError",
                     "ServiceUnavailableError"):
            assert getattr(scc, name) is getattr(nomyo._exceptions, name), name
        for name in ("get_memory_protection_info", "disable_secure_memory",
                     "enable_secure_memory", "secure_bytearray", "secure_bytes", "SecureBuffer"):
            assert getattr(sm, name) is getattr(nomyo._memory, name), name
        """
    )


def test_nomyo_securecompletionclient_is_one_stable_object() -> None:
    # The reference's nomyo.SecureCompletionClient is its submodule, used as
    # nomyo.SecureCompletionClient.SecureCompletionClient() (e.g. tests/reference_driver.py).
    # Here the package exports a class of the same name, which the import system replaces by
    # the submodule as soon as anything imports nomyo.SecureCompletionClient.
    run_python(
        """
        import nomyo
        before = nomyo.SecureCompletionClient
        problems = []
        try:
            nomyo.SecureCompletionClient.SecureCompletionClient
        except AttributeError:
            problems.append("nomyo.SecureCompletionClient.SecureCompletionClient: AttributeError")
        from nomyo.SecureCompletionClient import SecureCompletionClient
        if nomyo.SecureCompletionClient is not before:
            problems.append(f"nomyo.SecureCompletionClient changed from {before!r} "
                            f"to {nomyo.SecureCompletionClient!r} after importing the submodule")
        assert not problems, "; ".join(problems)
        """
    )


# --- exception tree ---------------------------------------------------------------------------


def _exception_classes() -> dict[str, type[BaseException]]:
    return {
        name: obj
        for name in nomyo.__all__
        if inspect.isclass(obj := getattr(nomyo, name)) and issubclass(obj, BaseException)
    }


def test_one_base_class() -> None:
    classes = _exception_classes()
    assert set(classes) == {*API_ERRORS, *NOT_API_ERRORS, "APIError", "NomyoError"}
    for name, cls in classes.items():
        assert issubclass(cls, nomyo.NomyoError), name
        assert issubclass(cls, Exception), name
    assert nomyo.NomyoError.__bases__ == (Exception,)


@pytest.mark.parametrize(("name", "status"), list(API_ERRORS.items()))
def test_api_errors(name: str, status: int) -> None:
    cls = getattr(nomyo, name)
    assert issubclass(cls, nomyo.APIError)
    error = cls("went wrong")
    assert error.status_code == status
    assert error.error_details is None
    assert str(error) == "went wrong"
    with pytest.raises(nomyo.APIError):
        raise cls("x", error_details={"detail": "d"})
    positional = cls("m", 418, {"detail": "teapot"})  # the reference's positional signature
    assert (positional.status_code, positional.error_details) == (418, {"detail": "teapot"})


def test_api_error_itself() -> None:
    error = nomyo.APIError("boom", 502, {"detail": "bad gateway"})
    assert (str(error), error.status_code, error.error_details) == (
        "boom",
        502,
        {"detail": "bad gateway"},
    )
    assert nomyo.APIError("no status").status_code is None


@pytest.mark.parametrize("name", NOT_API_ERRORS)
def test_not_api_errors(name: str) -> None:
    cls = getattr(nomyo, name)
    assert not issubclass(cls, nomyo.APIError)
    error = cls("message")
    assert str(error) == "message"
    assert not isinstance(error, nomyo.APIError)


def test_value_error_family() -> None:
    for name in VALUE_ERRORS:
        assert issubclass(getattr(nomyo, name), ValueError), name
    for name in ("SecurityError", "APIConnectionError", "APIError"):
        assert not issubclass(getattr(nomyo, name), ValueError), name
    assert issubclass(nomyo.APITimeoutError, nomyo.APIConnectionError)
    assert issubclass(nomyo.ClientClosedError, RuntimeError)  # what httpx raises
    assert issubclass(nomyo.RequestTooLargeError, nomyo.InvalidRequestError)


# --- sync and async methods, signatures -------------------------------------------------------


def test_sync_and_async_methods() -> None:
    client = SecureCompletionClient
    for name in ("generate_keys", "load_keys"):
        method = getattr(client, name)
        assert inspect.isfunction(method), name
        assert not inspect.iscoroutinefunction(method), name
    for name in (
        "fetch_server_public_key",
        "encrypt_payload",
        "decrypt_response",
        "send_secure_request",
    ):
        assert inspect.iscoroutinefunction(getattr(client, name)), name
    for name in ("create", "acreate"):
        assert inspect.iscoroutinefunction(getattr(nomyo.SecureChatCompletion, name)), name
    sync = nomyo.SyncSecureCompletionClient
    for name in (
        "generate_keys",
        "load_keys",
        "fetch_server_public_key",
        "encrypt_payload",
        "decrypt_response",
        "send_secure_request",
        "close",
    ):
        method = getattr(sync, name)
        assert inspect.isfunction(method), name
        assert not inspect.iscoroutinefunction(method), name
    assert not inspect.iscoroutinefunction(nomyo.SyncSecureChatCompletion.create)
    assert issubclass(sync, nomyo._base.BaseSecureClient)
    assert issubclass(SecureCompletionClient, nomyo._base.BaseSecureClient)


def test_sync_twins_take_the_same_arguments() -> None:
    for sync, asynchronous in (
        (nomyo.SyncSecureCompletionClient, SecureCompletionClient),
        (nomyo.SyncSecureChatCompletion, nomyo.SecureChatCompletion),
    ):
        for name in ("__init__", "create", "send_secure_request"):
            if not hasattr(asynchronous, name):
                continue
            a = inspect.signature(getattr(asynchronous, name)).parameters
            b = inspect.signature(getattr(sync, name)).parameters
            assert list(a) == list(b), (sync, name)
            assert [p.default for p in a.values()] == [p.default for p in b.values()], name


def _leading_params(func: Any, count: int) -> list[tuple[str, Any]]:
    params = list(inspect.signature(func).parameters.values())[1:]  # skip self
    return [(p.name, p.default) for p in params[:count]]


EMPTY = inspect.Parameter.empty


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        (
            SecureCompletionClient.__init__,
            [
                ("router_url", None),
                ("allow_http", False),
                ("secure_memory", True),
                ("max_retries", 2),
            ],
        ),
        (
            SecureCompletionClient.generate_keys,
            [("save_to_file", False), ("key_dir", "client_keys"), ("password", None)],
        ),
        (
            SecureCompletionClient.load_keys,
            [("private_key_path", EMPTY), ("public_key_path", None), ("password", None)],
        ),
        (
            SecureCompletionClient.decrypt_response,
            [("encrypted_response", EMPTY), ("payload_id", EMPTY)],
        ),
        (
            SecureCompletionClient.send_secure_request,
            [("payload", EMPTY), ("payload_id", EMPTY), ("api_key", None), ("security_tier", None)],
        ),
        (
            nomyo.SecureChatCompletion.__init__,
            [
                ("base_url", None),
                ("allow_http", False),
                ("api_key", None),
                ("secure_memory", True),
                ("key_dir", None),
                ("max_retries", 2),
            ],
        ),
        (nomyo.SecureChatCompletion.create, [("model", EMPTY), ("messages", EMPTY)]),
        (
            nomyo.SyncSecureCompletionClient.send_secure_request,
            [("payload", EMPTY), ("payload_id", EMPTY), ("api_key", None), ("security_tier", None)],
        ),
        (nomyo.SyncSecureChatCompletion.create, [("model", EMPTY), ("messages", EMPTY)]),
    ],
    ids=[
        "client-init",
        "generate_keys",
        "load_keys",
        "decrypt_response",
        "send_secure_request",
        "chat-init",
        "create",
        "sync-send_secure_request",
        "sync-create",
    ],
)
def test_reference_signatures(func: Any, expected: list[tuple[str, Any]]) -> None:
    assert _leading_params(func, len(expected)) == expected
    params = list(inspect.signature(func).parameters.values())[1:]
    for param in params[: len(expected)]:
        assert param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, param.name


def test_create_takes_openai_kwargs() -> None:
    kinds = [
        p.kind for p in inspect.signature(nomyo.SecureChatCompletion.create).parameters.values()
    ]
    assert inspect.Parameter.VAR_KEYWORD in kinds


@pytest.mark.parametrize("cls", [nomyo.SecureChatCompletion, nomyo.SyncSecureChatCompletion])
def test_typed_openai_parameters_default_to_not_given(cls: Any) -> None:
    from nomyo._params import OPENAI_PARAMETERS

    params = inspect.signature(cls.create).parameters
    typed = [
        n
        for n, p in params.items()
        if p.default is nomyo.NOT_GIVEN and n not in ("timeout", "max_retries")
    ]
    assert typed == list(OPENAI_PARAMETERS)
    for name in (
        "temperature",
        "top_p",
        "max_tokens",
        "n",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "tools",
        "tool_choice",
        "response_format",
        "logit_bias",
        "user",
    ):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert params["security_tier"].default is None


# --- the native module matches its stub ---------------------------------------------------------


STUB = Path(nomyo.__file__).with_name("_core.pyi")


def _stub_names() -> tuple[set[str], dict[str, set[str]]]:
    tree = ast.parse(STUB.read_text())
    names: set[str] = set()
    members: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            isinstance(base, ast.Name) and base.id == "TypedDict" for base in node.bases
        ):
            continue  # a type for the checker only (the shape of a dict argument)
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        if isinstance(node, ast.ClassDef):
            members[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    return names, members


def test_native_module_matches_its_stub() -> None:
    names, members = _stub_names()
    problems = [
        f"stub declares {n}, runtime lacks it" for n in sorted(names) if not hasattr(_core, n)
    ]
    public = {n for n in dir(_core) if not n.startswith("_")} | {"__version__"}
    problems += [f"runtime has {n}, stub lacks it" for n in sorted(public - names)]
    for cls_name, declared in sorted(members.items()):
        cls = getattr(_core, cls_name, None)
        if cls is None:
            continue
        problems += [
            f"stub declares {cls_name}.{m}, runtime lacks it"
            for m in sorted(declared)
            if not hasattr(cls, m)
        ]
        runtime = {m for m in vars(cls) if not m.startswith("_")}
        problems += [
            f"runtime has {cls_name}.{m}, stub lacks it" for m in sorted(runtime - declared)
        ]
    assert problems == [], "\n".join(problems)


_TYPED_PROGRAM = """
from __future__ import annotations

from typing import Literal

import openai
from openai.types.chat import ChatCompletion as SDKCompletion

import nomyo
from nomyo import (
    ChatCompletion,
    ChatCompletionMessage,
    ChatCompletionMessageToolCall,
    Choice,
    CompletionUsage,
    FinishReason,
)


# -- SDK --
def with_the_sdk() -> str | None:
    http = nomyo.openai_http_client("https://router.example", api_key="k")
    client = openai.OpenAI(api_key="unused", http_client=http)
    reply: SDKCompletion = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    return reply.choices[0].message.content


async def with_the_async_sdk() -> str | None:
    http = nomyo.openai_async_http_client("https://router.example")
    client = openai.AsyncOpenAI(api_key="unused", http_client=http)
    reply = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    return reply.choices[0].message.content
# -- end SDK --


def with_nomyo() -> list[str]:
    with nomyo.SyncSecureChatCompletion() as client:
        reply: ChatCompletion = client.create(
            "m", [{"role": "user", "content": "hi"}], timeout=5, max_retries=0,
            extra_headers={"X-Trace": "1"}, extra_query={"a": "b"},
        )
    choice: Choice = reply.choices[0]
    reason: FinishReason = choice.finish_reason
    stop: Literal["stop", "length", "tool_calls", "content_filter", "function_call"] = reason
    message: ChatCompletionMessage = choice.message
    calls: list[ChatCompletionMessageToolCall] = list(message.tool_calls or [])
    names = [call.function.name for call in calls]
    kind: Literal["function"] | None = calls[0].type if calls else None
    usage: CompletionUsage | None = reply.usage
    total: int = usage.total_tokens if usage is not None else 0
    dumped: dict[str, object] = reply.model_dump()
    text: str = reply.model_dump_json() + reply.to_json()
    again: ChatCompletion = ChatCompletion.model_validate(dumped)
    return [*names, stop, str(kind), str(total), text, again.id]
"""


def mypy_strict(program: Path) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` on one file, with no project configuration and no cache."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            os.devnull,
            "--config-file",
            os.devnull,
            str(program),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=program.parent,
    )


def without_sdk(program: str) -> str:
    head, _, rest = program.partition("# -- SDK --")
    return head + rest.partition("# -- end SDK --")[2]


@pytest.mark.usefixtures("_clean")
def test_user_program_type_checks_under_mypy_strict(tmp_path: Path) -> None:
    program = tmp_path / "user_program.py"
    program.write_text(without_sdk(_TYPED_PROGRAM))
    proc = mypy_strict(program)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ... and mypy does check it: a wrong type is reported.
    wrong = "\nwrong: int = ChatCompletion({}).choices[0].finish_reason\n"
    program.write_text(without_sdk(_TYPED_PROGRAM) + wrong)
    proc = mypy_strict(program)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'expression has type "Literal' in proc.stdout


@pytest.mark.usefixtures("_clean")
def test_openai_sdk_with_nomyo_http_client_type_checks(tmp_path: Path) -> None:
    program = tmp_path / "sdk_program.py"
    program.write_text(_TYPED_PROGRAM)
    proc = mypy_strict(program)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.usefixtures("_clean")
def test_nested_reply_types_are_exported(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    with sync_chat(router.url, client_key) as client:
        reply = client.create("m", HELLO, tools=tools, tool_choice="required")
    choice = reply.choices[0]
    assert isinstance(choice, nomyo.Choice)
    assert isinstance(choice.message, nomyo.ChatCompletionMessage)
    assert choice.message.tool_calls
    assert isinstance(choice.message.tool_calls[0], nomyo.ChatCompletionMessageToolCall)
    assert isinstance(choice.message.tool_calls[0].function, nomyo.Function)
    assert choice.finish_reason == "tool_calls"
    assert isinstance(reply.usage, nomyo.CompletionUsage)
