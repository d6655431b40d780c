"""Context managers of things that close: ``with x:`` calls ``close()``, ``async with x:``
awaits ``aclose()``."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["AsyncCloseable", "Closeable"]

SelfT = TypeVar("SelfT")


class Closeable:
    """``with x:`` closes ``x`` on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: SelfT) -> SelfT:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncCloseable:
    """``async with x:`` awaits ``x.aclose()`` on the way out."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self: SelfT) -> SelfT:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
