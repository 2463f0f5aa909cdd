"""Automatic pipelining: the commands many tasks issue in one loop iteration leave in one write.

ioredis' and fred's design, on hiredis' C packer and parser: one connection, the waiters of
the commands sent in a FIFO (Redis answers in order), and one flush per loop iteration. Written
here because no kept Python client does it at the needed cost: redis-py's asyncio client holds
a pooled connection per command for a whole round trip; coredis 6.9 multiplexes (one write for
many callers) but spends tens of microseconds of Python per command (anyio cancel scopes,
telemetry, retry wrappers), so 50 tasks get no more from it than from redis-py; valkey-glide
cannot reach a Unix socket (valkey-glide issue 4878). BENCHMARKS.md has the figures.

After a connection Redis closed, a command is sent again once, on a fresh connection: prices
are idempotent, and a stream entry may be added twice (publishing is at-least-once, as it was
with redis-py's one retry).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import hiredis

from tradestore.errors import (
    ConfigError,
    InternalError,
    StoreUnavailableError,
    TradestoreError,
)
from tradestore.peers import GuardedCredentials

Arg = str | int | float | bytes
Command = tuple[Arg, ...]
Transport = tuple[asyncio.BaseTransport, Any]
Connector = Callable[[Callable[[], asyncio.Protocol]], Awaitable[Transport]]
"""Opens a transport to the server with the given protocol (``loop.create_unix_connection``
bound to an address); the one place that knows where Redis is."""

pack = cast(Callable[[Command], bytes], hiredis.pack_command)
"""hiredis' C packer (its stub types the argument as a one-element tuple)."""

_REFUSED = ("NOPERM", "WRONGPASS", "NOAUTH")
_UNAVAILABLE = ("LOADING", "BUSY", "OOM", "READONLY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN")
_WATCH_FRACTION = 10
"""The reply timeout is checked this many times per timeout period."""


class LinkLostError(StoreUnavailableError):
    """The connection closed under a command; the command may be sent again once."""


def reply_error(what: str, error: hiredis.ReplyError) -> TradestoreError:
    """Redis' error reply as tradestore's type, by its prefix."""
    message = str(error)
    prefix = message.split(" ", 1)[0]
    if prefix in _REFUSED:
        return ConfigError(f"redis: {what}: refused: {message}")
    if prefix in _UNAVAILABLE:
        return StoreUnavailableError(f"redis: {what}: {message}")
    return InternalError(f"redis: {what}: {message}")


class _Link(asyncio.Protocol):
    """One connection: commands packed since the last flush, and the waiters of those sent."""

    def __init__(self, timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(encoding="utf-8", errors="surrogateescape")
        self._outgoing: list[bytes] = []
        self._waiters: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._transport: asyncio.Transport | None = None
        self._timeout_s = timeout_s
        self._watchdog: asyncio.TimerHandle | None = None
        self.lost: StoreUnavailableError | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._watchdog = self._loop.call_later(self._timeout_s / _WATCH_FRACTION, self._watch)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(LinkLostError(f"redis: connection lost: {exc or 'closed by the server'}"))

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiters = self._waiters
        try:
            reply = reader.gets()
            while reply is not False:
                future = waiters.popleft()[0]
                if not future.done():  # a cancelled caller's reply is dropped, in its turn
                    if type(reply) is hiredis.ReplyError:
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
                reply = reader.gets()
        except (hiredis.ProtocolError, IndexError) as error:  # garbage, or a reply never asked
            self.fail(StoreUnavailableError(f"redis: unreadable reply: {error!r}"))

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue a packed command; the returned future gets its reply."""
        if self.lost is not None:
            raise self.lost
        future = self._loop.create_future()
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(packed)
        self._waiters.append((future, self._loop.time() + self._timeout_s))
        return future

    def _flush(self) -> None:
        if self._transport is not None and self._outgoing:
            self._transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def _watch(self) -> None:
        """The oldest command unanswered past the timeout: Redis is stalled, the link is
        dropped (replies would no longer match) and every waiter fails."""
        if self._waiters and self._waiters[0][1] < self._loop.time():
            self.fail(StoreUnavailableError(f"redis: no reply within {self._timeout_s} s"))
            return
        self._watchdog = self._loop.call_later(self._timeout_s / _WATCH_FRACTION, self._watch)

    def fail(self, error: StoreUnavailableError) -> None:
        """Take the link down: every waiter gets ``error``, new commands are refused."""
        if self.lost is None:
            self.lost = error
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._transport is not None:
            self._transport.abort()
        self._outgoing.clear()
        while self._waiters:
            future = self._waiters.popleft()[0]
            if not future.done():
                future.set_exception(self.lost)


class Multiplexer:
    """Commands of many tasks over one connection, pipelined automatically.

    Connects on first use and again after the connection was lost; the server is checked
    before the credentials are sent (``GuardedCredentials``). A command is sent again once if
    the connection closed under it (a Redis restart); a stalled Redis (no reply within the
    command timeout) fails every waiting command with StoreUnavailableError.
    """

    def __init__(
        self,
        connector: Connector,
        credentials: GuardedCredentials,
        db: int,
        *,
        connect_timeout_s: float,
        command_timeout_s: float,
    ) -> None:
        self._connector = connector
        self._credentials = credentials
        self._db = db
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._link: _Link | None = None
        self._connecting: asyncio.Future[_Link] | None = None
        self._closed = False

    async def execute(self, what: str, *command: Arg) -> Any:  # noqa: ANN401
        """One command's reply; errors are tradestore's, ``what`` names the call in them."""
        packed = pack(command)
        try:
            try:
                return await self._live_link().send(packed)
            except LinkLostError:
                return await (await self._connected()).send(packed)
        except hiredis.ReplyError as error:
            raise reply_error(what, error) from None
        except StoreUnavailableError as error:
            raise type(error)(f"{error} ({what})") from None

    async def execute_many(self, what: str, commands: Sequence[Command]) -> list[Any]:
        """Replies of several commands sent together; the first error is raised once all
        have been answered."""
        packed = [pack(command) for command in commands]
        try:
            try:
                return await self._gather(what, self._live_link(), packed)
            except LinkLostError:
                return await self._gather(what, await self._connected(), packed)
        except StoreUnavailableError as error:
            raise type(error)(f"{error} ({what})") from None

    @staticmethod
    async def _gather(what: str, link: _Link, packed: list[bytes]) -> list[Any]:
        futures = [link.send(command) for command in packed]
        replies: list[Any] = []
        failure: BaseException | None = None
        try:
            for future in futures:
                try:
                    replies.append(await future)
                except hiredis.ReplyError as error:
                    failure = failure or reply_error(what, error)
                except StoreUnavailableError as error:
                    failure = failure or error
        finally:
            for future in futures:  # the caller was cancelled: nobody will read the others
                future.cancel()
        if failure is not None:
            raise failure
        return replies

    def _live_link(self) -> _Link:
        link = self._link
        if link is None or link.lost is not None:
            raise LinkLostError("redis: not connected")
        return link

    async def _connected(self) -> _Link:
        """A live link, shared by every caller that needed one at the same time."""
        link = self._link
        if link is not None and link.lost is None:
            return link
        if self._closed:
            raise StoreUnavailableError("redis: the cache store is closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connected_or_not)
        # Shielded: one caller cancelled must not cancel the connection the others wait for.
        return await asyncio.shield(self._connecting)

    def _connected_or_not(self, connecting: asyncio.Future[_Link]) -> None:
        self._connecting = None
        if not connecting.cancelled() and connecting.exception() is None:
            self._link = connecting.result()

    async def _connect(self) -> _Link:
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                secret = self._credentials.secret()  # checks the server first
                link = _Link(self._command_timeout_s)
                await self._connector(lambda: link)
                handshake = [link.send(pack(("AUTH", self._credentials.username, secret)))]
                if self._db:
                    handshake.append(link.send(pack(("SELECT", self._db))))
                try:
                    for reply in handshake:
                        await reply
                except BaseException:
                    link.fail(StoreUnavailableError("redis: handshake failed"))
                    raise
                return link
        except hiredis.ReplyError as error:
            raise reply_error("connect", error) from None
        except TimeoutError:
            raise StoreUnavailableError(
                f"redis: connect: no answer within {self._connect_timeout_s} s"
            ) from None
        except OSError as error:
            raise StoreUnavailableError(f"redis: connect: {error}") from error

    async def ping(self) -> None:
        await self.execute("ping", "PING")

    def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._link is not None:
            self._link.fail(StoreUnavailableError("redis: the cache store is closed"))
