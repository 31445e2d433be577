"""``async for`` over a read that returns the next piece of a body, empty at its end.

A class, not an async generator: the compiled build has none (config/native.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T", bound=bytes | bytearray)


class Pieces(Generic[T]):
    __slots__ = ("_read",)

    def __init__(self, read: Callable[[], Awaitable[T]]) -> None:
        self._read = read

    def __aiter__(self) -> Pieces[T]:
        return self

    async def __anext__(self) -> T:
        piece = await self._read()
        if not piece:
            raise StopAsyncIteration
        return piece
