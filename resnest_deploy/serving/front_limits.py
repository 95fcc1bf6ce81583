"""What the HTTP front lets clients hold: connections (all, per client address, a headroom kept for
health probes) and request body bytes (per request and endpoint, across every connection, per client
address), in two pools so that clients holding large bodies never starve ordinary requests."""

from __future__ import annotations

from dataclasses import dataclass, field

from resnest_deploy.errors import HttpRejected
from resnest_deploy.serving.front_http import STEP, Message, infer_model


@dataclass(frozen=True)
class FrontLimits:
    """What one request, one client and all clients together may hold."""

    max_body: int = 64 * 2**20  # Triton's own default for --http-max-input-size
    max_admin_body: int = 2**20
    max_head: int = 32 * 2**10
    max_buffered: int = 256 * 2**20  # bodies over small_body held across every connection
    max_buffered_per_client: int = 128 * 2**20  # ... and by one client address
    small_body: int = 2**20  # bodies up to this come from a pool of their own, so that clients
    max_buffered_small: int = 64 * 2**20  # holding large bodies never starve ordinary requests
    max_buffered_small_per_client: int = 16 * 2**20
    max_connections: int = 4096
    probe_headroom: int = 16  # of max_connections, kept for health probes (GET /v2/health/*)
    max_connections_per_client: int = 1024
    head_timeout_s: float = 10.0  # from a request's first byte to the end of its head
    body_timeout_s: float = 60.0  # from the end of the head to the end of the body
    idle_timeout_s: float = 300.0  # a keep-alive connection between requests
    upstream_timeout_s: float = 600.0  # tritonserver's answer to one request
    max_response: int = 512 * 2**20
    inline_decode: int = 256 * 2**10  # JSON larger than this is decoded in the worker process
    decode_queue: int = 4  # large bodies decoding or waiting, across all clients


@dataclass
class Pool:
    """Body bytes held, in total and by client address, under two caps."""

    cap: int
    per_client: int
    used: int = 0
    by_client: dict[str, int] = field(default_factory=dict)

    def take(self, client: str, n: int, *, force: bool = False) -> bool:
        mine = self.by_client.get(client, 0)
        if not force and (self.used + n > self.cap or mine + n > self.per_client):
            return False
        self.used += n
        self.by_client[client] = mine + n
        return True

    def give(self, client: str, n: int) -> None:
        self.used -= n
        left = self.by_client.get(client, 0) - n
        if left > 0:
            self.by_client[client] = left
        else:
            self.by_client.pop(client, None)


class Admission:
    """The front's bounds and what is held against them now; run on the front's event loop only."""

    def __init__(self, bounds: FrontLimits) -> None:
        self.bounds = bounds
        self.pools = (
            Pool(bounds.max_buffered_small, bounds.max_buffered_small_per_client),
            Pool(bounds.max_buffered, bounds.max_buffered_per_client),
        )
        self.conns = 0
        self.conns_by_client: dict[str, int] = {}

    @property
    def buffered(self) -> int:
        """Body bytes held now, across every connection."""
        return sum(p.used for p in self.pools)

    # -- connections ------------------------------------------------------------------------------

    def connect(self, client: str) -> bool:
        """Count a new connection of ``client``; False (not counted) when a cap is reached."""
        count = self.conns_by_client.get(client, 0)
        if self.conns >= self.bounds.max_connections or count >= self.bounds.max_connections_per_client:
            return False
        self.conns_by_client[client] = count + 1
        self.conns += 1
        return True

    def probe_only(self) -> bool:
        """Whether the newest connection is in the cap's headroom, kept for health probes."""
        return self.conns > self.bounds.max_connections - self.bounds.probe_headroom

    def disconnect(self, client: str) -> None:
        self.conns -= 1
        left = self.conns_by_client.get(client, 1) - 1
        if left > 0:
            self.conns_by_client[client] = left
        else:
            self.conns_by_client.pop(client, None)

    # -- request bodies ---------------------------------------------------------------------------

    def admit(self, m: Message) -> None:
        """Refuse, from the head alone, a body over its endpoint's bound."""
        limit = self.body_limit(m)
        declared = m.headers.get(b"content-length")
        length = int(declared) if declared is not None else 0  # llhttp checked it is digits, once
        if length > limit or (m.headers.get(b"transfer-encoding") is not None and limit == 0):
            raise HttpRejected(413, f"the body of this request may hold at most {limit} bytes", close=True)
        if declared is not None:
            # nothing taken from a pool yet: a head that declares 1 MiB and sends nothing holds nothing
            # (the body is reserved as it comes, in STEP steps, from the pool its declared size picks)
            m.declared = length

    def body_limit(self, m: Message) -> int:
        if m.limit < 0:
            m.limit = 0
            if m.method == "POST":
                m.limit = self.bounds.max_body if infer_model(m) is not None else self.bounds.max_admin_body
        return m.limit

    def reserve(self, m: Message, client: str, size: int) -> None:
        """Hold at least ``size`` body bytes for ``m`` (rounded up to a STEP, within its declared
        length) from its pool (small or large body, as the declared length or the bytes so far say),
        within every bound, or refuse."""
        limit = self.body_limit(m)
        if size > limit:
            raise HttpRejected(413, f"the body of this request may hold at most {limit} bytes", close=True)
        total = min(-(-size // STEP) * STEP, m.declared if m.declared >= 0 else limit)
        large = max(total, m.declared) > self.bounds.small_body
        pool = self.pools[large]
        held = self.pools[m.pool] if m.reserved else None
        if held is not None:  # a chunked body growing, perhaps into the large pool
            held.give(client, m.reserved)
        if not pool.take(client, total):
            if held is not None:
                held.take(client, m.reserved, force=True)
            raise HttpRejected(
                503, "the server holds too many request bodies now; retry", close=True, retry=True
            )
        m.reserved, m.pool = total, int(large)

    def release(self, m: Message, client: str) -> None:
        if m.reserved:
            self.pools[m.pool].give(client, m.reserved)
            m.reserved = 0
        m.buf = None
