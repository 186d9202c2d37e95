"""WebSocket viewers of /api/v1/live: N clients in one process measuring publish -> receive latency.

A helper process of ``bench/live.py`` (which starts one or two of these), usable alone as well::

    python -m bench.viewers --url ws://127.0.0.1:8000/api/v1/live --viewers 25 --duration 30

Each viewer opens its own WebSocket, sends ``{"op":"subscribe","events":["readings"]}`` (every
device, every metric; ``--subscribe`` replaces it) and, for every reading ``[device, metric,
ts_us, value]`` it receives inside the measurement window, records ``receive time - ts_us`` in a
histogram shared by the process (0.1 ms buckets up to 10 s, counts beyond it beside). ``ts``
is the device's own time, stamped by ``bench.loadgen --payload live`` when it wrote the PUBLISH,
on the same machine's clock.

How the receive time is taken, and why this is not ``websockets.connect()``: the clients are the
websockets library's sans-I/O ``ClientProtocol`` (handshake, masking, permessage-deflate, ping and
close handling are the library's) driven by one small ``asyncio.Protocol`` per connection. Its
``data_received`` only stamps the wall clock and queues the bytes; parsing, inflating and JSON
decoding (orjson) run afterwards in one drain callback for everything that arrived in that loop
iteration. So when the server writes one frame to 25 sockets, all 25 are stamped as the event loop
sees them, not one after the other's decoding: the client's own work does not show up as server
latency. A frame is dated by the chunk of bytes that completed it. The asyncio ``recv()`` API
would instead date a frame when its reader task got to run. The server sends every viewer of a
subscription the same frame, so the process decodes each distinct frame once and the other
viewers reuse the parsed object (compared byte for byte); what stays per viewer and per reading
is one histogram increment.

Control (when run by ``bench/live.py``): once every viewer is subscribed the process prints
``{"event": "ready", ...}`` on stdout and reads one JSON line from stdin,
``{"measure_from": epoch_s, "measure_to": epoch_s}``; readings received in that window are
measured. Without ``--wait-for-window`` it measures from ``--warmup`` s after ready for
``--duration`` s. Once a second it prints ``{"event": "tick", ...}`` (readings, max and mean
latency of the last second); at the end it writes its result JSON to ``--out`` (or stdout) and
closes the connections with a normal close handshake.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import orjson
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

try:
    import uvloop

    HAVE_UVLOOP = True
except ImportError:  # pragma: no cover - Windows or a bare interpreter
    HAVE_UVLOOP = False

# --- tunables -----------------------------------------------------------------------------------

DEFAULT_SUBSCRIBE: dict[str, Any] = {"op": "subscribe", "events": ["readings"]}
# Histogram resolution and range: 0.1 ms is finer than anything a 50 ms goal needs, and 10 s
# covers any backlog we would still call "latency" (beyond it: counted in `over`, max kept).
HIST_RES_US = 100
HIST_MAX_US = 10_000_000
HIST_BUCKETS = HIST_MAX_US // HIST_RES_US
# Parallel handshakes while connecting (uvicorn's listen backlog is 2048; this is politeness).
CONNECT_CONCURRENCY = 16
CONNECT_TIMEOUT_S = 15.0
# A frame of one ingest batch at 10k readings/s is ~50 KB; after a stall it can be a few MB.
MAX_FRAME_BYTES = 64 * 2**20
# After measure_to, keep reading this long so frames already on the wire are drained (they are
# dated by arrival, so late processing does not change the figures), then report.
END_GRACE_S = 0.5
CLOSE_TIMEOUT_S = 3.0
# Distinct frames remembered for reuse of their decoded form (see _Shared.decode): frames reach
# the viewers of a process within milliseconds of each other, so a few cover the spread.
RECENT_FRAMES = 8
# Error frames and unexpected closes kept verbatim per viewer (the rest are only counted).
KEEP_EXAMPLES = 3


# What websockets hands over as a frame's payload; orjson reads all three.
BytesLike = bytes | bytearray | memoryview


class ViewerError(Exception):
    """The viewers could not run as asked (connection refused, handshake failed)."""


# --- measurement state ----------------------------------------------------------------------------


@dataclass
class Window:
    """The measurement window in epoch microseconds; readings outside it are only counted."""

    start_us: int = 2**63 - 1  # until the window is known nothing is measured
    end_us: int = 2**63 - 1


class Histogram:
    """Latency histogram: ``HIST_BUCKETS`` buckets of ``HIST_RES_US`` from 0, plus overflow.

    The hot path is one Python statement per reading, ``buckets[(t_us - ts) // res] += 1``, with
    no range check: the list is twice as long as the range, so a negative latency (a ts ahead of
    the receive time, which one machine's clock cannot produce) indexes from the end into the
    upper half and is counted as ``negative``, and one of 10 s or more raises IndexError and is
    counted as ``over`` on the slow path. Quantiles come from the buckets (0.1 ms resolution).
    """

    def __init__(self) -> None:
        self.buckets = [0] * (2 * HIST_BUCKETS)
        self.over = 0  # >= HIST_MAX_US
        self.far_negative = 0  # below -HIST_MAX_US
        self.bad = 0  # rows without an integer ts in third place

    def add_frame(self, t_us: int, rows: Sequence[Any]) -> None:
        """Count ``t_us - row[2]`` for every row of a readings frame received at ``t_us``."""
        b, res = self.buckets, HIST_RES_US
        it = iter(rows)
        while True:
            try:
                for r in it:
                    b[(t_us - r[2]) // res] += 1
                return
            except IndexError:
                # The row the loop was on: beyond the range, or malformed (too short).
                self._slow(t_us, r)
            except (TypeError, KeyError):
                self.bad += 1

    def _slow(self, t_us: int, row: Any) -> None:
        try:
            latency = t_us - row[2]
        except (IndexError, TypeError, KeyError):
            self.bad += 1
            return
        if latency >= 0:
            self.over += 1
        else:
            self.far_negative += 1

    def in_range(self) -> list[int]:
        """The buckets of latencies in [0, HIST_MAX_US) (a copy)."""
        return self.buckets[:HIST_BUCKETS]

    @property
    def negative(self) -> int:
        return sum(self.buckets[HIST_BUCKETS:]) + self.far_negative

    def to_dict(self) -> dict[str, Any]:
        """Sparse form: ``[[bucket index, count], ...]`` for the non-empty in-range buckets."""
        main = self.in_range()
        return {
            "res_us": HIST_RES_US,
            "range_us": HIST_MAX_US,
            "sparse": [[i, n] for i, n in enumerate(main) if n],
            "over": self.over,
            "negative": self.negative,
            "bad_rows": self.bad,
        }


def summarize(hists: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Merge ``Histogram.to_dict()`` forms and give count, mean, p50/p90/p99/p999 and max in ms.

    Each figure is the upper edge of the bucket holding that rank (nearest rank), so it is
    exact to ``res_us`` and never below the true value. Negative latencies rank as 0; ``over``
    ranks above everything and a quantile that lands there is reported as the range with
    ``above_range`` naming it.
    """
    merged: dict[int, int] = {}
    over = negative = bad = 0
    res = HIST_RES_US
    for h in hists:
        res = int(h["res_us"])
        for i, n in h["sparse"]:
            merged[int(i)] = merged.get(int(i), 0) + int(n)
        over += int(h["over"])
        negative += int(h["negative"])
        bad += int(h.get("bad_rows", 0))
    ordered = sorted(merged.items())
    in_range = sum(n for _, n in ordered)
    count = in_range + over + negative
    out: dict[str, Any] = {
        "count": count,
        "resolution_ms": res / 1000,
        "over_range": over,
        "negative": negative,
        "bad_rows": bad,
    }
    if not count:
        return out | {
            "mean_ms": None,
            "p50_ms": None,
            "p90_ms": None,
            "p99_ms": None,
            "p999_ms": None,
            "max_ms": None,
        }
    # Mean from bucket midpoints (over-range counted at the range's end): a summary, not exact.
    total_us = sum((i + 0.5) * res * n for i, n in ordered) + over * HIST_MAX_US
    out["mean_ms"] = round(total_us / count / 1000, 2)
    above: list[str] = []
    for name, q in (("p50_ms", 0.50), ("p90_ms", 0.90), ("p99_ms", 0.99), ("p999_ms", 0.999)):
        rank = max(1, math.ceil(q * count))
        seen = negative
        value: float | None = None
        if rank <= seen:
            value = 0.0
        else:
            for i, n in ordered:
                seen += n
                if seen >= rank:
                    value = (i + 1) * res / 1000
                    break
        if value is None:
            value = HIST_MAX_US / 1000
            above.append(name)
        out[name] = round(value, 3)
    if over:
        out["max_ms"] = HIST_MAX_US / 1000
        above.append("max_ms")
    elif ordered:
        out["max_ms"] = round((ordered[-1][0] + 1) * res / 1000, 3)
    else:
        out["max_ms"] = 0.0  # every latency was negative
    if above:
        out["above_range"] = above
    return out


@dataclass
class ViewerStats:
    """What one viewer saw. ``*_window`` counts only the measurement window."""

    index: int
    connected: bool = False
    subscribed: bool = False
    extensions: str | None = None  # Sec-WebSocket-Extensions the server accepted
    frames: Counter[str] = field(default_factory=Counter)  # by "type", whole session
    readings_total: int = 0
    readings_window: int = 0
    frames_window: int = 0
    lagged_frames: int = 0  # `lagged` frames, whole session
    lagged_dropped: int = 0  # sum of their `dropped`
    lagged_frames_window: int = 0
    bytes_received: int = 0
    error_frames: list[Any] = field(default_factory=list)
    closed: str | None = None  # why the connection ended, if it ended before we closed it

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "connected": self.connected,
            "subscribed": self.subscribed,
            "extensions": self.extensions,
            "frames": dict(self.frames),
            "readings_total": self.readings_total,
            "readings_window": self.readings_window,
            "frames_window": self.frames_window,
            "lagged_frames": self.lagged_frames,
            "lagged_dropped": self.lagged_dropped,
            "lagged_frames_window": self.lagged_frames_window,
            "bytes_received": self.bytes_received,
            "error_frames": self.error_frames,
            "closed": self.closed,
        }


class _Shared:
    """Per-process state: the window, the histograms, and the queue of stamped arrivals.

    Readings received before the window go to ``warmup`` (for the progress lines only), those in
    it to ``window``; later ones are only counted.
    """

    def __init__(self) -> None:
        self.window = Window()
        self.warmup = Histogram()
        self.measured = Histogram()
        self.pending: list[tuple[int, _Viewer, bytes]] = []
        self.drain_scheduled = False
        self.tick_readings = 0  # all readings since the last tick line
        self.decode_errors = 0
        # The last few distinct frames and their decoded form: every viewer of a process gets
        # the same frames (the server encodes once per subscription), so each is parsed once.
        self.recent: deque[tuple[bytes, Any]] = deque(maxlen=RECENT_FRAMES)
        self.decoded = 0
        self.reused = 0

    def decode(self, data: BytesLike) -> Any:
        """``orjson.loads(data)``, or the object already decoded from equal bytes (read-only)."""
        for raw, obj in self.recent:
            if len(raw) == len(data) and raw == data:
                self.reused += 1
                return obj
        obj = orjson.loads(data)
        self.decoded += 1
        self.recent.append((bytes(data), obj))
        return obj


# --- one viewer ---------------------------------------------------------------------------------


class _Viewer(asyncio.Protocol):
    """One WebSocket client: a websockets ``ClientProtocol`` fed by this asyncio Protocol."""

    def __init__(
        self,
        shared: _Shared,
        index: int,
        url: str,
        subscribe: bytes,
        compression: bool,
    ) -> None:
        self.shared = shared
        self.stats = ViewerStats(index)
        self.subscribe = subscribe
        self.ws = ClientProtocol(
            parse_uri(url),
            extensions=[ClientPerMessageDeflateFactory()] if compression else None,
            max_size=MAX_FRAME_BYTES,
        )
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.open: asyncio.Future[None] = loop.create_future()
        self.subscribed: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.closing = False  # we started the close: its end is not an error
        self.fragments: list[BytesLike] = []

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ws.send_request(self.ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        # The receive time is taken here, before any parsing: see the module docstring.
        shared = self.shared
        shared.pending.append((time.time_ns() // 1000, self, data))
        if not shared.drain_scheduled:
            shared.drain_scheduled = True
            asyncio.get_running_loop().call_soon(_drain, shared)

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing and self.stats.closed is None:
            code = self.ws.close_code
            self.stats.closed = (
                f"{type(exc).__name__}: {exc}"
                if exc
                else f"closed by server (code {code}, reason {self.ws.close_reason!r})"
            )
        why = ConnectionError(self.stats.closed or "connection closed")
        for fut in (self.open, self.subscribed):
            if not fut.done():
                fut.set_exception(why)
        if not self.done.done():
            self.done.set_result(None)

    # websockets

    def _flush(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()  # SEND_EOF: half-close after the close handshake

    def feed(self, t_us: int, data: bytes) -> None:
        """Parse bytes stamped at ``t_us`` and handle every event they completed."""
        self.stats.bytes_received += len(data)
        self.ws.receive_data(data)
        self._flush()
        for event in self.ws.events_received():
            if isinstance(event, Response):
                self._on_response(event)
            elif isinstance(event, Frame):
                self._on_frame(event, t_us)
        if self.ws.state is State.CLOSED and self.transport is not None:
            self.transport.close()

    def _on_response(self, response: Response) -> None:
        if self.ws.handshake_exc is not None or self.ws.state is not State.OPEN:
            exc = self.ws.handshake_exc or ViewerError(f"HTTP {response.status_code}")
            self.stats.closed = f"handshake failed: {exc}"
            if not self.open.done():
                self.open.set_exception(ViewerError(self.stats.closed))
            if self.transport is not None:
                self.transport.close()
            return
        self.stats.connected = True
        self.stats.extensions = response.headers.get("Sec-WebSocket-Extensions")
        self.ws.send_text(self.subscribe)
        self._flush()
        if not self.open.done():
            self.open.set_result(None)

    def _on_frame(self, frame: Frame, t_us: int) -> None:
        op = frame.opcode
        if op is Opcode.TEXT or op is Opcode.BINARY:
            if not frame.fin:
                self.fragments = [frame.data]
                return
            self._on_message(frame.data, t_us)
        elif op is Opcode.CONT:
            self.fragments.append(frame.data)
            if frame.fin:
                data, self.fragments = b"".join(self.fragments), []
                self._on_message(data, t_us)
        # PING is answered by the protocol itself (flushed above); PONG and CLOSE need nothing.

    def _on_message(self, data: BytesLike, t_us: int) -> None:
        shared, stats = self.shared, self.stats
        try:
            msg = shared.decode(data)
            kind = msg.get("type") if isinstance(msg, dict) else None
        except orjson.JSONDecodeError:
            shared.decode_errors += 1
            stats.frames["<not json>"] += 1
            return
        stats.frames[str(kind)] += 1
        window = shared.window
        in_window = window.start_us <= t_us < window.end_us
        if kind == "readings":
            rows = msg.get("data") or ()
            n = len(rows)
            stats.readings_total += n
            shared.tick_readings += n
            # Rows are [device, metric, ts_us, value]: latency = t_us - row[2].
            if in_window:
                stats.readings_window += n
                stats.frames_window += 1
                shared.measured.add_frame(t_us, rows)
            elif t_us < window.start_us:
                shared.warmup.add_frame(t_us, rows)
        elif kind == "lagged":
            stats.lagged_frames += 1
            stats.lagged_dropped += int(msg.get("dropped") or 0)
            if in_window:
                stats.lagged_frames_window += 1
        elif kind == "subscribed":
            stats.subscribed = True
            if not self.subscribed.done():
                self.subscribed.set_result(None)
        elif kind == "error":
            if len(stats.error_frames) < KEEP_EXAMPLES:
                stats.error_frames.append(msg.get("error", msg))
            if not self.subscribed.done():
                self.subscribed.set_exception(ViewerError(f"subscribe refused: {msg}"))

    def close(self) -> None:
        """Start a normal close handshake (1000); the server's close ends the connection."""
        self.closing = True
        if self.ws.state is State.OPEN:
            self.ws.send_close(1000)
            self._flush()
        elif self.transport is not None:
            self.transport.close()


def _drain(shared: _Shared) -> None:
    """Handle everything stamped since the last drain, oldest first."""
    shared.drain_scheduled = False
    pending, shared.pending = shared.pending, []
    for t_us, viewer, data in pending:
        try:
            viewer.feed(t_us, data)
        except Exception as exc:  # a protocol error on one connection must not stop the others
            viewer.stats.closed = f"{type(exc).__name__}: {exc}"
            if viewer.transport is not None:
                viewer.transport.abort()


# --- the process --------------------------------------------------------------------------------


async def _connect(
    shared: _Shared,
    index: int,
    url: str,
    subscribe: bytes,
    compression: bool,
    sem: asyncio.Semaphore,
) -> _Viewer:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    viewer: _Viewer | None = None
    async with sem:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, viewer = await loop.create_connection(
                    lambda: _Viewer(shared, index, url, subscribe, compression), host, port
                )
                await viewer.open
                await viewer.subscribed
        except BaseException:
            if viewer is not None and viewer.transport is not None:
                viewer.transport.abort()
            raise
    return viewer


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _ticker(shared: _Shared, viewers: Sequence[_Viewer]) -> None:
    """Once a second: readings and latency quantiles of the last second (progress only).

    The quantiles are the difference between the current phase's histogram and its copy from
    the previous tick: ~100k list entries compared once a second, instead of any per-reading
    work on the hot path.
    """
    snapshots: dict[int, list[int]] = {}
    while True:
        await asyncio.sleep(1.0)
        now_us = time.time_ns() // 1000
        window = shared.window
        phase = (
            "warmup"
            if now_us < window.start_us
            else ("measure" if now_us < window.end_us else "after")
        )
        hist = shared.warmup if phase == "warmup" else shared.measured
        current = hist.in_range()
        previous = snapshots.get(id(hist))
        snapshots[id(hist)] = current
        if previous is None:
            sparse = [[i, c] for i, c in enumerate(current) if c]
        else:
            pairs = enumerate(zip(current, previous, strict=True))
            sparse = [[i, c - p] for i, (c, p) in pairs if c != p]
        last = summarize([{"res_us": HIST_RES_US, "sparse": sparse, "over": 0, "negative": 0}])
        n, shared.tick_readings = shared.tick_readings, 0
        _emit(
            {
                "event": "tick",
                "t": now_us / 1e6,
                "phase": phase,
                "readings": n,
                "p50_ms": last["p50_ms"],
                "p99_ms": last["p99_ms"],
                "max_ms": last["max_ms"],
                "lagged": sum(v.stats.lagged_frames for v in viewers),
                "closed": sum(1 for v in viewers if v.stats.closed),
            }
        )


async def run_viewers(args: argparse.Namespace) -> dict[str, Any]:
    """Connect, subscribe, wait for (or choose) the window, measure, close, report."""
    shared = _Shared()
    subscribe = orjson.dumps(json.loads(args.subscribe)) if args.subscribe else b""
    if not subscribe:
        subscribe = orjson.dumps(DEFAULT_SUBSCRIBE)
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    compression = args.compression == "deflate"
    t0 = time.time()
    tasks = [
        asyncio.create_task(
            _connect(shared, args.first_index + i, args.url, subscribe, compression, sem)
        )
        for i in range(args.viewers)
    ]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    viewers = [r for r in results if isinstance(r, _Viewer)]
    failures = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    connect_s = time.time() - t0
    extensions = sorted({v.stats.extensions or "none" for v in viewers})
    _emit(
        {
            "event": "ready",
            "connected": len(viewers),
            "failed": len(failures),
            "failures": failures[:KEEP_EXAMPLES],
            "connect_s": round(connect_s, 3),
            "extensions": extensions,
        }
    )
    ticker = asyncio.create_task(_ticker(shared, viewers))
    try:
        if args.wait_for_window:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line.strip():
                raise ViewerError("stdin closed before the measurement window was sent")
            window = json.loads(line)
            start_s, end_s = float(window["measure_from"]), float(window["measure_to"])
        else:
            start_s = time.time() + args.warmup
            end_s = start_s + args.duration
        shared.window.start_us, shared.window.end_us = int(start_s * 1e6), int(end_s * 1e6)
        await asyncio.sleep(max(0.0, end_s + END_GRACE_S - time.time()))
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        t_close = time.monotonic()
        for v in viewers:
            v.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.gather(*(v.done for v in viewers), return_exceptions=True)
        close_s = time.monotonic() - t_close
        not_closed = 0
        for v in viewers:
            if v.transport is not None and not v.done.done():
                not_closed += 1
                v.transport.abort()
    return {
        "url": args.url,
        "viewers": args.viewers,
        "connected": len(viewers),
        "connect_failures": failures,
        "connect_s": round(connect_s, 3),
        # Our close handshakes: how long until every connection ended, and how many the server
        # had not closed within CLOSE_TIMEOUT_S (aborted).
        "close_s": round(close_s, 3),
        "close_timeouts": not_closed,
        "compression": args.compression,
        "extensions": extensions,
        "subscribe": json.loads(subscribe),
        "window": {"from": start_s, "to": end_s, "seconds": end_s - start_s},
        "histogram": shared.measured.to_dict(),
        "latency": summarize([shared.measured.to_dict()]),
        "decode_errors": shared.decode_errors,
        "frames_decoded": shared.decoded,
        "frames_reused": shared.reused,
        "per_viewer": [v.stats.to_dict() for v in viewers],
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.viewers",
        description="N WebSocket viewers of /api/v1/live measuring publish -> receive latency.",
    )
    p.add_argument("--url", required=True, help="ws://HOST:PORT/api/v1/live")
    p.add_argument("--viewers", type=int, default=10)
    p.add_argument("--first-index", type=int, default=0, help="number of the first viewer")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    p.add_argument("--duration", type=float, default=30.0, help="seconds measured")
    p.add_argument(
        "--wait-for-window",
        action="store_true",
        help="read the window from stdin after printing ready (bench/live.py does this)",
    )
    p.add_argument(
        "--compression",
        choices=("deflate", "none"),
        default="deflate",
        help="offer permessage-deflate as browsers do (default) or not",
    )
    p.add_argument("--subscribe", default=None, help="the subscribe frame (JSON)")
    p.add_argument("--out", default=None, help="write the result JSON here (default: stdout)")
    p.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI: run the viewers and write their result JSON."""
    args = _parse_args(argv)
    if args.viewers < 1 or args.duration <= 0 or args.warmup < 0:
        print("viewers: --viewers and --duration must be positive", file=sys.stderr)
        return 2
    coro = run_viewers(args)
    try:
        result = asyncio.run(coro) if args.no_uvloop or not HAVE_UVLOOP else uvloop.run(coro)
    except ViewerError as exc:
        print(f"viewers: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        _emit({"event": "result", **result})
    return 0 if result["connected"] == args.viewers else 1


if __name__ == "__main__":
    sys.exit(main())
