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

    async def infer(self, body: bytes | bytearray, raw_length: bytes | None, limit: int) -> Infer:
        """The checked request; ``raw_length``: the Inference-Header-Content-Length header's value."""
        header_length = None
        if raw_length is not None:
            if not raw_length.isdigit() or len(raw_length) > 12:
                raise RequestRejected(400, "Inference-Header-Content-Length is not a number")
            header_length = int(raw_length)
        json_bytes = len(body) if header_length is None else header_length
        if json_bytes <= self.inline:
            return infer_from_body(body, header_length, limit)
        if self.decoding >= self.queue:
            raise HttpRejected(503, "the server is decoding too many large requests now; retry", retry=True)
        self.decoding += 1
        try:
            if self._pool is None:
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn")
                )
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self._pool, worker_infer, body, header_length, limit)
        except concurrent.futures.process.BrokenProcessPool:
            self._pool = None
            raise HttpRejected(503, "the request decoder stopped; retry", retry=True) from None
        finally:
            self.decoding -= 1
        if isinstance(found, tuple):
            raise RequestRejected(*found)
        return found

    def close(self) -> None:
        """Stop and join the worker process, if one was started."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
