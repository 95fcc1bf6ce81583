"""The public gRPC port of ``serve``: messages bounded in size, decoded, checked and re-serialised.

Why: tritonserver 2.51 accepts gRPC messages of any size (its server is built with the largest
message gRPC allows, and none of its options lowers it: a 1,000 MB ModelInfer was accepted and took
tritonserver to 2.7 GB RSS). So, as for HTTP (:mod:`.front`), tritonserver's gRPC port is private
(loopback) and this front owns the public one: a ``grpc.aio`` server whose
``grpc.max_receive_message_length`` refuses a larger message (RESOURCE_EXHAUSTED) before any of it
is decoded, with a bound on concurrent calls, a quarter of them per peer (one connection: 64 idle
streams from one channel held every call gRPC allowed, and every other client got
RESOURCE_EXHAUSTED), and a deadline for a stream's messages (the first within the HTTP body
timeout, the next within the HTTP idle timeout: DEADLINE_EXCEEDED). Each message is decoded with
tritonclient's ``service_pb2`` in the handler (unknown fields dropped; bytes that are no such message get
INVALID_ARGUMENT, not gRPC's UNKNOWN), a ModelInfer request's shapes are checked as the HTTP
front checks them, and tritonserver gets the message re-serialised from that decoded value. Answers
and status codes are relayed as Triton gives them. Only the admin header travels with a call (Triton
checks it for the restricted APIs).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from resnest_deploy._deps import require
from resnest_deploy.errors import GrpcRejected
from resnest_deploy.serving.requests import MAX_RANK, limit_for

SERVICE = "inference.GRPCInferenceService"
ADMIN_HEADER = "resnest-deploy-admin"
#: the same bound as an HTTP body (Triton's own default for --http-max-input-size)
MAX_MESSAGE = 64 * 2**20
MAX_CALLS = 64  # calls in flight: with MAX_MESSAGE, what the front may hold
MAX_CALLS_PER_PEER = MAX_CALLS // 4  # ... and one peer (one client connection)


def check_infer(request: Any, limits: Mapping[str, int]) -> None:
    """A decoded ModelInferRequest: each input's shape bounded as over HTTP."""
    limit = limit_for(limits, request.model_name)
    if not request.inputs:
        raise GrpcRejected("the request has no inputs")
    for item in request.inputs:
        shape = list(item.shape)
        if len(shape) > MAX_RANK or any(d < 0 for d in shape):
            raise GrpcRejected(f"input {item.name!r} needs a shape of at most {MAX_RANK} non-negative dims")
        if math.prod(shape) > limit:
            raise GrpcRejected(
                f"input {item.name!r} declares shape {shape}: more than the {limit} elements a request "
                "to this model may carry; send a smaller batch"
            )
    if len(request.raw_input_contents) > len(request.inputs):
        raise GrpcRejected("more raw_input_contents than inputs")


@dataclass
class GrpcFront:
    host: str
    port: int
    upstream_port: int
    limits: Mapping[str, int]
    max_message: int = MAX_MESSAGE
    max_calls: int = MAX_CALLS
    max_calls_per_peer: int = MAX_CALLS_PER_PEER
    first_message_s: float = 60.0  # a stream's first message, from its start
    stream_idle_s: float = 300.0  # a stream's next message, from the one before
    _by_peer: dict[str, int] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: Any = None
    _channel: Any = None
    _error: BaseException | None = field(default=None, repr=False)

    def start(self) -> None:
        """Listen (raises OSError when the port is taken) and serve in a thread of its own."""
        grpc = require("grpc")
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._start(grpc))
            except BaseException as e:  # reported to start()'s caller
                self._error = e
                started.set()
                return
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="resnest-deploy-grpc-front", daemon=True)
        self._thread.start()
        started.wait(30)
        if self._error is not None:
            self._thread.join(5)
            self._loop.close()
            self._loop = None
            raise self._error

    async def _start(self, grpc: Any) -> None:
        service_pb2 = require("tritonclient.grpc.service_pb2")
        unlimited = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.upstream_port}", options=unlimited)
        handlers = {}
        for method in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
            kind = getattr(service_pb2, method.input_type.name)
            path = f"/{SERVICE}/{method.name}"
            # messages arrive as bytes and are decoded in the handler, which can answer INVALID_ARGUMENT
            if method.client_streaming:
                call = self._channel.stream_stream(path, request_serializer=_canonical)
                handlers[method.name] = grpc.stream_stream_rpc_method_handler(self._streaming(call, kind))
            else:
                call = self._channel.unary_unary(path, request_serializer=_canonical)
                check = (lambda r: check_infer(r, self.limits)) if method.name == "ModelInfer" else None
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(self._unary(call, kind, check))
        self._server = grpc.aio.server(
            handlers=[grpc.method_handlers_generic_handler(SERVICE, handlers)],
            maximum_concurrent_rpcs=self.max_calls,
            options=[
                ("grpc.max_receive_message_length", self.max_message),
                ("grpc.max_send_message_length", -1),
            ],
        )
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            bound = self._server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise OSError(f"cannot listen on gRPC port {self.port} on {self.host}")
        await self._server.start()

    def _enter(self, context: Any) -> str | None:
        """Count a call against its peer; None when the peer already has its share in flight."""
        peer = str(context.peer())
        if self._by_peer.get(peer, 0) >= self.max_calls_per_peer:
            return None
        self._by_peer[peer] = self._by_peer.get(peer, 0) + 1
        return peer

    def _leave(self, peer: str) -> None:
        left = self._by_peer.get(peer, 1) - 1
        if left > 0:
            self._by_peer[peer] = left
        else:
            self._by_peer.pop(peer, None)

    def _too_many(self) -> str:
        return f"this client has {self.max_calls_per_peer} calls in flight, the most one may hold; retry"

    def _unary(self, call: Any, kind: Any, check: Callable[[Any], None] | None) -> Callable[..., Any]:
        grpc = require("grpc")

        async def handle(raw: bytes, context: Any) -> bytes:
            peer = self._enter(context)
            if peer is None:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_many())
            assert peer is not None
            try:
                try:
                    request = _decode(kind, raw)
                    if check is not None:
                        check(request)
                except GrpcRejected as e:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
                try:
                    return bytes(
                        await call(request, metadata=_admin(context), timeout=context.time_remaining())
                    )
                except grpc.aio.AioRpcError as e:
                    await context.abort(e.code(), e.details() or "")
                    raise  # abort raises; this keeps type checkers content
            finally:
                self._leave(peer)

        return handle

    def _streaming(self, call: Any, kind: Any) -> Callable[..., Any]:
        grpc = require("grpc")

        async def handle(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            peer = self._enter(context)
            if peer is None:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_many())
            assert peer is not None
            ended: list[tuple[Any, str]] = []  # why the front ended the call: (status, message)

            async def checked() -> AsyncIterator[Any]:
                incoming = aiter(requests)
                wait = self.first_message_s
                while True:
                    try:
                        raw = await asyncio.wait_for(anext(incoming), wait)
                    except StopAsyncIteration:
                        return
                    except asyncio.TimeoutError:  # TimeoutError from 3.11
                        ended.append(
                            (grpc.StatusCode.DEADLINE_EXCEEDED, f"the stream sent no request in {wait:g} s")
                        )
                        upstream.cancel()
                        return
                    wait = self.stream_idle_s
                    try:
                        request = _decode(kind, raw)
                        check_infer(request, self.limits)
                    except GrpcRejected as e:  # the call ends here: nothing after it is forwarded
                        ended.append((grpc.StatusCode.INVALID_ARGUMENT, str(e)))
                        upstream.cancel()
                        return
                    yield request

            upstream = call(checked(), metadata=_admin(context))
            try:
                try:
                    async for answer in upstream:
                        yield bytes(answer)
                except asyncio.CancelledError:
                    if not ended:
                        raise
                except grpc.aio.AioRpcError as e:
                    if not ended:
                        await context.abort(e.code(), e.details() or "")
                if ended:
                    await context.abort(*ended[0])
            finally:
                self._leave(peer)

        return handle

    def close(self, grace: float = 0.0) -> None:
        """Stop taking calls, let those in flight finish within ``grace`` seconds, stop."""
        if self._loop is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            if self._server is not None:
                await self._server.stop(grace)
            if self._channel is not None:
                await self._channel.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(grace + 5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(Exception):
            loop.close()
        self._loop = None


def _decode(kind: Any, raw: bytes) -> Any:
    """One message of type ``kind`` from the client's bytes; anything else is GrpcRejected."""
    from google.protobuf.message import DecodeError

    try:
        return kind.FromString(raw)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise GrpcRejected(f"the message is not a valid {kind.DESCRIPTOR.name}: {e}") from None


def _canonical(message: Any) -> bytes:
    """The decoded message, as tritonserver gets it: known fields only, serialised anew."""
    message.DiscardUnknownFields()
    return bytes(message.SerializeToString())


def _admin(context: Any) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in context.invocation_metadata() or () if k == ADMIN_HEADER)
