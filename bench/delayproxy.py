"""A TCP proxy that delays every client→server chunk (a slow database for the bench)."""

from __future__ import annotations

import asyncio
import contextlib


class DelayProxy:
    def __init__(self, target_host: str, target_port: int, delay_s: float) -> None:
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop accepting and cut every proxied connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer, self.delay_s),
            self._pipe(up_reader, writer, 0.0),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            w.close()
            self._writers.discard(w)

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
    ) -> None:
        while chunk := await reader.read(65536):
            if delay:
                await asyncio.sleep(delay)  # every query waits this long before MySQL sees it
            writer.write(chunk)
            await writer.drain()
        writer.close()
