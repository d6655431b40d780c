"""A ``nomyo proxy`` (``ChatProxy``) on its own event loop, for the gateway tests."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import nomyo
from nomyo import _core
from nomyo._proxy import ChatProxy

TOKEN = "gateway-test-token"
MODEL = "gateway-model"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


class ProxyThread:
    """A ChatProxy with token :data:`TOKEN` on its own event loop in a daemon thread.

    ``chat_options`` go to its :class:`nomyo.SecureChatCompletion` (default retries unless
    given).
    """

    def __init__(self, router_url: str, key: _core.PrivateKey, **chat_options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._main(router_url, key, chat_options),)
        )
        self._thread.daemon = True
        self._thread.start()
        assert self._started.wait(30), "the proxy did not start"
        self.url = self.proxy.url

    async def _main(self, router_url: str, key: _core.PrivateKey, options: dict[str, Any]) -> None:
        chat = nomyo.SecureChatCompletion(router_url, allow_http=True, **options)
        chat.client._set_key(key)
        self.proxy = await ChatProxy(chat, "127.0.0.1", 0, model=MODEL, auth_token=TOKEN).start()
        self._stop = asyncio.Event()
        self._started.set()
        await self._stop.wait()
        await self.proxy.stop()
        await chat.aclose()

    def close(self) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
