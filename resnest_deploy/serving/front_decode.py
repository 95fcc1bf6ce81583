"""An infer request's body decoded and checked (:mod:`.requests`): small JSON inline, large JSON in
one worker process behind a bounded queue, so that the event loop keeps answering health probes
while a 64 MiB body is decoded."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing

from resnest_deploy.errors import HttpRejected, RequestRejected
from resnest_deploy.serving.requests import Infer, infer_from_body, worker_infer


class Decoder:
    """Decodes infer bodies; ``inline`` bytes of JSON or fewer on the loop, larger ones in the
    worker, at most ``queue`` of those decoding or waiting at once."""

    def __init__(self, inline: int, queue: int) -> None:
        self.inline, self.queue = inline, queue
        self.decoding = 0
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def now(self, body: bytes | bytearray, raw_length: bytes | None, limit: int) -> Infer | None:
        """The checked request when its JSON is small enough to decode on the loop, else None (then
        :meth:`infer`); ``raw_length``: the Inference-Header-Content-Length header's value."""
        header_length = _header_length(raw_length)
        json_bytes = len(body) if header_length is None else header_length
        return infer_from_body(body, header_length, limit) if json_bytes <= self.inline else None

    async def infer(self, body: bytes | bytearray, raw_length: bytes | None, limit: int) -> Infer:
        """The checked request, decoded in the worker process when its JSON is large."""
        found = self.now(body, raw_length, limit)
        if found is not None:
            return found
        header_length = _header_length(raw_length)
        if self.decoding >= self.queue:
            raise HttpRejected(503, "the server is decoding too many large requests now; retry", retry=True)
        self.decoding += 1
        try:
            if self._pool is None:
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn")
                )
            loop = asyncio.get_running_loop()
            got = await loop.run_in_executor(self._pool, worker_infer, body, header_length, limit)
        except concurrent.futures.process.BrokenProcessPool:
            self._pool = None
            raise HttpRejected(503, "the request decoder stopped; retry", retry=True) from None
        finally:
            self.decoding -= 1
        if isinstance(got, tuple):
            raise RequestRejected(*got)
        return got

    def close(self) -> None:
        """Stop and join the worker process, if one was started."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _header_length(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 12:
        raise RequestRejected(400, "Inference-Header-Content-Length is not a number")
    return int(raw)
