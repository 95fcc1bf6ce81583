"""One client connection of ``serve``'s HTTP front (:mod:`.front`): its whole life, from the client's
bytes through llhttp, the checks and the request rebuilt for Triton, to Triton's answer written back.

Why protocols and callbacks, not streams and a task per connection: on a 2-core box where Triton,
its python stub and the clients share the cores, the front's CPU per request is what it takes from
Triton. A connection is an ``asyncio.Protocol`` that feeds llhttp in ``data_received``; a request
whose JSON is small and whose upstream connection is open is checked, rebuilt and sent to Triton in
that same callback, and Triton's answer is written back from the upstream's callback: no StreamReader
buffer, future, task wake-up or timeout context per request. Deadlines are one lazy timer per
connection, moved forward by a float. The rare slow steps (decoding large JSON in the worker,
opening the upstream connection) run in a task. One request's path is one chain of callbacks, so
it stays in this one module.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, cast

from resnest_deploy.errors import HttpRejected, RequestRejected
from resnest_deploy.serving.front_http import (
    CONTINUE,
    Message,
    Parsed,
    answer,
    error_body,
    refusal,
)
from resnest_deploy.serving.front_upstream import Reply, Upstream, no_delay

if TYPE_CHECKING:
    from resnest_deploy.serving.front import Forward, Front


class Client(asyncio.Protocol):
    """One client connection: llhttp fed as bytes arrive, one request answered at a time (in order;
    reading pauses while a whole request waits behind the one in hand), deadlines on one timer."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.bounds = front.bounds
        self.transport: asyncio.Transport | None = None
        self.client = "?"
        self.parsed: Parsed | None = None
        self.up: Upstream | None = None
        self.m: Message | None = None  # the request being answered
        self.keep = False  # whether the connection stays open after it
        self.busy = False
        self.blocked = False  # an answer waits in the transport: the client does not read
        self.paused = False  # reading paused: a whole request waits behind the one in hand
        self.closed = False
        self.eof = False  # the client sent all it will: answer what it holds, then close
        self.since = time.monotonic()  # since when the connection waits (for a request, or a reader)
        self.timer: asyncio.TimerHandle | None = None
        self.armed = math.inf  # when the timer fires
        self.killer: asyncio.TimerHandle | None = None  # closing with answers unread: abort then

    # -- the transport's --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        front = self.front
        peer = t.get_extra_info("peername")
        self.client = str(peer[0]) if peer else "?"
        if not front.admission.connect(self.client):
            self.closed = True
            t.write(answer(503, error_body("too many connections; retry"), close=True, retry=True))
            t.close()
            return
        front.conns.add(self)
        no_delay(t)
        t.set_write_buffer_limits(high=0)  # pause_writing as soon as an answer waits unread
        parsed = self.parsed = Parsed(front.admission, self.client)
        # the last few connections under the cap are kept for health probes (answered, then closed)
        parsed.probe_only = front.admission.probe_only()
        parsed.parser = front.httptools.HttpRequestParser(parsed)
        self._arm()

    def data_received(self, data: bytes) -> None:
        parsed = self.parsed
        if parsed is None or self.closed or parsed.error is not None:
            return  # the connection ends once what it holds is answered: nothing more is read
        cur = parsed.current
        head_open = cur is not None and not cur.head_done
        finished = len(parsed.done)
        httptools = self.front.httptools
        try:
            parsed.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # the upgrading request was refused in on_headers_complete: it gets that one answer
            last = parsed.current or (parsed.done[-1] if parsed.done else None)
            if last is None or last.reject is None:
                parsed.error = answer(400, error_body("upgrades and CONNECT are not served"), close=True)
        except httptools.HttpParserError as e:
            parsed.error = answer(400, error_body(f"malformed HTTP request: {e}"), close=True)
        now = parsed.current
        if now is not None and not now.head_done:
            # counted from the head's first byte: every byte of this read when it began the head,
            # else (a request before it ended in this read) what the parser handed over of it
            if head_open and now is cur:
                now.head_size += len(data)
            elif cur is None and len(parsed.done) == finished:
                now.head_size = len(data)
            else:
                now.head_size = now.counted
            if now.head_size > self.bounds.max_head and parsed.error is None:
                parsed.error = answer(431, error_body("the request head is too large"), close=True)
        if self.busy or self.blocked:
            if parsed.done and not self.paused:
                self.paused = True
                t = self.transport
                assert t is not None
                t.pause_reading()
            return
        self._advance()

    def eof_received(self) -> bool:
        if self.parsed is None:  # refused at connect
            return False
        self.eof = True
        self._advance()
        return True  # the transport stays open for the answers still to come

    def pause_writing(self) -> None:
        self.blocked, self.since = True, time.monotonic()
        self._arm()

    def resume_writing(self) -> None:
        self.blocked, self.since = False, time.monotonic()
        self._advance()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed and self.parsed is None:  # refused at connect: never counted
            return
        self.closed = True
        for handle in (self.timer, self.killer):
            if handle is not None:
                handle.cancel()
        self.timer = self.killer = None
        front = self.front
        front.conns.discard(self)
        parsed = self.parsed
        if parsed is not None:
            if parsed.current is not None:
                front.admission.release(parsed.current, self.client)
            for m in parsed.done:
                front.admission.release(m, self.client)
            parsed.done.clear()
        front.admission.disconnect(self.client)
        if not self.busy and self.up is not None:  # else once Triton has answered
            self.up.close()
            self.up = None

    # -- the next step ------------------------------------------------------------------------------

    def _advance(self) -> None:
        """Answer what the connection holds next: whole requests (a loop, not recursion: thousands
        of pipelined requests refused here are answered at once), else the refusal that ends it;
        else 100 Continue where one is expected, and wait."""
        parsed, t = self.parsed, self.transport
        assert parsed is not None and t is not None
        while parsed.done and not (self.busy or self.closed or self.blocked):
            self._dispatch(parsed.done.popleft())
        if self.busy or self.closed:
            return
        if self.blocked:
            self._arm()
            return
        cur = parsed.current
        if parsed.error is None and cur is not None and cur.reject is not None and cur.reject.close:
            parsed.error = refusal(cur.reject, close=True)
        if parsed.error is not None:
            t.write(parsed.error)
            self.close()
            return
        if self.eof:
            self.close()
            return
        if cur is not None and cur.head_done and cur.expect_continue:
            cur.expect_continue = False
            t.write(CONTINUE)
        if self.paused:
            self.paused = False
            t.resume_reading()
        self._arm()

    def _dispatch(self, m: Message) -> None:
        front = self.front
        self.busy, self.m = True, m
        front.inflight += 1
        keep = self.keep = m.keep_alive and not front.draining
        try:
            forward = front.build(m)
        except HttpRejected as e:
            self._finish(refusal(e, close=e.close or not keep), keep and not e.close)
            return
        except RequestRejected as e:
            self._finish(answer(e.status, error_body(str(e)), close=not keep), keep)
            return
        except Exception:  # a fault of ours: the request still gets one answer and releases its bytes
            self._finish(answer(500, error_body("the front failed on this request"), close=True), False)
            raise
        up = self.up
        if forward is None or up is None or up.lost:
            task = asyncio.get_running_loop().create_task(self._slowly(m, forward))
            front.tasks.add(task)
            task.add_done_callback(front.tasks.discard)
            return
        self._send(up, forward)

    async def _slowly(self, m: Message, forward: Forward | None) -> None:
        """The steps that wait: decoding large JSON in the worker, connecting to Triton."""
        front, keep = self.front, self.keep
        try:
            if forward is None:
                forward = await front.decode(m)
                assert forward is not None
        except HttpRejected as e:
            self._finish(refusal(e, close=e.close or not keep), keep and not e.close)
            self._advance()
            return
        except RequestRejected as e:
            self._finish(answer(e.status, error_body(str(e)), close=not keep), keep)
            self._advance()
            return
        except Exception:  # a fault of ours (asyncio.CancelledError, at close, is no Exception)
            self._finish(answer(500, error_body("the front failed on this request"), close=True), False)
            raise
        up = self.up
        if up is None or up.lost:
            try:
                up = self.up = await Upstream.open(front.upstream_host, front.upstream_port, front.httptools)
            except (ConnectionError, OSError) as e:
                self._answered(None, e)
                return
        self._send(up, forward)

    def _send(self, up: Upstream, forward: Forward) -> None:
        method, path, body, extra = forward
        b = self.bounds
        try:
            up.send(method, path, body, extra, b.max_response, b.upstream_timeout_s, self._answered)
        except ConnectionError as e:
            self._answered(None, e)

    def _answered(self, reply: Reply | None, error: Exception | None) -> None:
        """Triton's answer to the request in hand, or why there is none (502, and the client's
        connection closed: what Triton made of the request is not known)."""
        m = self.m
        assert m is not None
        if reply is None:
            if self.up is not None:
                self.up.close()
                self.up = None
            self._finish(answer(502, error_body("the inference server is not answering"), close=True), False)
            return  # closed
        if not reply.keep_alive and self.up is not None:
            self.up.close()
            self.up = None
        keep = self.keep
        head_only = m.method == "HEAD"
        self._finish(
            answer(reply.status, reply.body, close=not keep, headers=reply.headers, head_only=head_only), keep
        )
        self._advance()

    def _finish(self, reply: bytes, keep: bool) -> None:
        """Write the answer to the request in hand, release what it held, close unless ``keep``
        (then the caller goes on: :meth:`_advance`)."""
        front, m, t, parsed = self.front, self.m, self.transport, self.parsed
        assert m is not None and t is not None and parsed is not None
        self.m, self.busy = None, False
        front.inflight -= 1
        front.admission.release(m, self.client)
        if self.closed:  # the client left meanwhile
            if self.up is not None:
                self.up.close()
                self.up = None
            return
        t.write(reply)
        if not keep or front.draining:
            self.close()
            return
        now = self.since = time.monotonic()
        cur = parsed.current
        if cur is not None:  # read while this request was answered: its time starts now
            b = self.bounds
            cur.deadline = max(cur.deadline, now + (b.body_timeout_s if cur.head_done else b.head_timeout_s))

    # -- deadlines and closing ------------------------------------------------------------------------

    def _deadline(self) -> float:
        """When the connection times out in its present state (inf: a request is in hand)."""
        if self.busy:
            return math.inf
        b = self.bounds
        if self.blocked:
            return self.since + b.body_timeout_s
        parsed = self.parsed
        assert parsed is not None
        cur = parsed.current
        if cur is not None:
            return cur.deadline
        if parsed.seen == 0 or parsed.probe_only:  # a new connection sends its first byte soon
            return self.since + b.head_timeout_s
        return self.since + b.idle_timeout_s

    def _arm(self) -> None:
        """Make sure the timer fires by the deadline; it is rearmed when it fires early (a deadline
        that moved on), so a request in one read costs no timer call."""
        deadline = self._deadline()
        if deadline < self.armed:
            if self.timer is not None:
                self.timer.cancel()
            self.armed = deadline
            delay = max(deadline - time.monotonic(), 0.0)
            self.timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self.timer, self.armed = None, math.inf
        if self.closed:
            return
        deadline = self._deadline()
        if deadline == math.inf:  # armed again once the request in hand is answered
            return
        if time.monotonic() < deadline:
            self._arm()
            return
        t = cast(asyncio.Transport, self.transport)
        if self.blocked:  # the client does not take its answers
            t.abort()
            return
        parsed = cast(Parsed, self.parsed)
        if parsed.current is not None:
            t.write(answer(408, error_body("the request was not sent in time"), close=True))
        self.close()

    def close(self) -> None:
        """Close once what was written is sent; abort when the client does not take it in time."""
        t = cast(asyncio.Transport, self.transport)
        self.closed = True
        if t.get_write_buffer_size() and self.killer is None:
            self.killer = asyncio.get_running_loop().call_later(self.bounds.body_timeout_s, t.abort)
        t.close()

    def abort(self) -> None:
        cast(asyncio.Transport, self.transport).abort()
