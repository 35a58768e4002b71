"""Consume a Redis Stream into a rehydrate store, exactly once (docs/integrations.md).

    python examples/redis_stream_consumer.py --redis-url redis://127.0.0.1:6379/0 \\
        --stream events --group counters --store DIR [--sync always|interval|none] \\
        [--consumer NAME] [--count N] [--max-idle SECONDS] \\
        [--checkpoint-every-s SECONDS] [--http-host HOST] [--http-port PORT]

Each stream entry ``{"key": K, "delta": D}`` adds the integer D to
``counters[K]`` in the store (an entry without them is kept in table
``rejected`` under its stream ID, so a bad entry never blocks the stream).
Entries are read with XREADGROUP, ``--count`` at a time; each read becomes
one ``store.consume(source, offset)`` batch, so the state and the offset of
the read's last entry are logged in one frame: after any crash the store
holds a read either whole, with its offset, or not at all.

**The store is the source of truth, not the group.** At every start the
consumer moves the group's cursor to the store's offset (XGROUP CREATE, or
XGROUP SETID when the group exists), acknowledges the entries still pending
at or below it (applied by a run killed before its XACK) and reads from
there with ``>``. An entry the store does not hold is therefore delivered
again whatever the group had recorded, also when the store lost its tail or
was restored from an older copy; an entry at or below the store's offset is
acknowledged and skipped, never applied twice. One store per group: the
group is this store's cursor on the stream (a store has one writer, its
directory's LOCK).

**XACK comes after durability.** After each batch the consumer calls
``store.sync()`` and only then XACKs the read. With ``--sync always`` (the
default) the batch's commit already fsynced it and ``sync()`` returns at
once; with ``interval`` or ``none`` it is the fsync that makes the read
durable. So an acknowledged entry is in the store on disk under every sync
mode, across kill -9 and power loss, and a group's pending list is what the
store may not have yet (which matters to anything that trims the stream by
what was acknowledged). A kill between the commit and the XACK leaves the
entries pending; the next start acknowledges them as above.

**Stream IDs as offsets.** A Redis stream ID is "ms-seq" (two unsigned
64-bit numbers); ``store.consume`` takes one int64 per source. The mapping
is ``ms << 20 | seq`` (``offset_of`` / ``stream_id_of``): it keeps the IDs'
order and is exact for ``seq < 2**20`` (over a million entries in one
millisecond) and ``ms < 2**43`` (the year 2248). IDs Redis generates fit;
an explicit ID beyond that is refused with ConfigError rather than
mis-ordered. The source name is ``redis-stream:<stream>``.

Each acknowledged read prints one line, ``applied <last id> offset=<int>
entries=<n> lsn=<store lsn>``; the start prints ``ready offset=<int or
none>``. ``--max-idle S`` exits (0) once no entry came for S seconds (0: as
soon as the stream is drained); without it the consumer runs until SIGTERM
or SIGINT, which end it after the batch in hand (a read blocks at most one
second), closing the store cleanly: ``rehydrate.close_on_signals`` syncs the
store, lets the loop finish its batch (its ``on_close``), closes the store
and exits (0 on SIGTERM, 130 on SIGINT, 1 past ``SHUTDOWN_DEADLINE_S``).
``--http-port`` serves the store's ``/readyz``, ``/livez`` and ``/metrics``
(``store.serve_http``); the store opens in the background, so ``/readyz``
says 503 with its progress during a cold start (examples/kubernetes/).

Needs the ``redis`` package (redis-py; in the project's ``test`` extra).
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from typing import Any, Optional, Sequence, cast

import redis

import rehydrate
from rehydrate import ConfigError, RehydrateError, Store

TABLE = "counters"
REJECTED = "rejected"
SEQ_BITS = 20  # offset = ms << SEQ_BITS | seq
MAX_SEQ = (1 << SEQ_BITS) - 1
MAX_MS = (1 << (63 - SEQ_BITS)) - 1
SYNC_MODES = ("always", "interval", "none")
# How long a shutdown may take, SIGTERM to a closed store: the batch in hand
# (a read blocks at most READ_BLOCK_MS) and the store's close; past it the
# process exits with 1 (rehydrate.close_on_signals). A Kubernetes
# terminationGracePeriodSeconds must exceed it (examples/kubernetes/).
SHUTDOWN_DEADLINE_S = 20.0
READ_BLOCK_MS = 1000

Entry = tuple[str, dict[str, str]]


def offset_of(stream_id: str) -> int:
    """The int64 offset of a stream ID "ms-seq" (order kept); ConfigError
    for an ID outside the mapping."""
    ms_text, _, seq_text = stream_id.partition("-")
    try:
        ms, seq = int(ms_text), int(seq_text)
    except ValueError:
        raise ConfigError(f"not a Redis stream ID: {stream_id!r}") from None
    if not (0 <= ms <= MAX_MS and 0 <= seq <= MAX_SEQ):
        raise ConfigError(f"stream ID {stream_id} is outside ms < 2**{63 - SEQ_BITS}, "
                          f"seq < 2**{SEQ_BITS}: it has no offset")
    return ms << SEQ_BITS | seq


def stream_id_of(offset: int) -> str:
    """The stream ID of an offset (``offset_of``'s inverse)."""
    return f"{offset >> SEQ_BITS}-{offset & MAX_SEQ}"


def source_of(stream: str) -> str:
    return f"redis-stream:{stream}"


def apply(batch: Any, stream_id: str, fields: dict[str, str]) -> None:
    """One entry's writes (the part a real consumer replaces)."""
    key = fields.get("key")
    try:
        delta = int(fields.get("delta", ""))
    except ValueError:
        delta = None
    if key is not None and delta is not None and abs(delta) < 1 << 53:
        batch.incr(TABLE, key, delta)
    else:
        batch.put(REJECTED, stream_id, fields)


def rewind_group(r: redis.Redis, stream: str, group: str, stored: Optional[int]) -> None:
    """Point the group's cursor at the store's offset and acknowledge what
    is pending at or below it (the store holds it already)."""
    cursor = stream_id_of(stored) if stored is not None else "0"
    try:
        r.xgroup_create(stream, group, id=cursor, mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
        r.xgroup_setid(stream, group, id=cursor)
    if stored is None:
        return
    while True:
        pending = cast(list[dict[str, Any]],
                       r.xpending_range(stream, group, min="-", max=cursor, count=1000))
        if not pending:
            return
        r.xack(stream, group, *[p["message_id"] for p in pending])


def read(r: redis.Redis, stream: str, group: str, consumer: str, count: int,
         block_ms: Optional[int]) -> list[Entry]:
    """Up to ``count`` new entries for this consumer (waiting up to
    ``block_ms``; None: not at all)."""
    reply = cast(Optional[list[tuple[str, list[Entry]]]],
                 r.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms))
    return reply[0][1] if reply else []


def consume_entries(store: Store, r: redis.Redis, stream: str, group: str,
                    entries: list[Entry]) -> Optional[int]:
    """Apply one read in one batch, make it durable, then XACK it. The
    store's LSN, or None when the store held every entry already."""
    source = source_of(stream)
    stored = store.offsets.get(source, -1)
    fresh = [(sid, fields) for sid, fields in entries if offset_of(sid) > stored]
    lsn: Optional[int] = None
    if fresh:
        batch = store.consume(source, offset_of(fresh[-1][0]))
        if batch is not None:
            with batch:
                for sid, fields in fresh:
                    apply(batch, sid, fields)
            store.sync()  # durable before acknowledged (at once under sync="always")
            lsn = batch.lsn
    r.xack(stream, group, *[sid for sid, _ in entries])
    return lsn


class Stop:
    """SIGTERM/SIGINT: the loop ends after the batch in hand, then the store
    closes and the process exits (rehydrate.close_on_signals)."""

    def __init__(self) -> None:
        self.event = threading.Event()  # set: the loop stops
        self.loop_over = threading.Event()  # set by main once the loop has ended

    def install(self, store: Store) -> rehydrate.ShutdownHandle:
        # On a signal: the store synced, then _finish_batch, then the store
        # closed and the process gone, all within SHUTDOWN_DEADLINE_S.
        return rehydrate.close_on_signals(store, deadline_s=SHUTDOWN_DEADLINE_S,
                                          on_close=self._finish_batch)

    def _finish_batch(self, signum: int) -> None:
        # The batch in hand is committed, synced and XACKed before the store
        # closes (else its entries stay pending until the next start). A
        # read blocks at most READ_BLOCK_MS; half the deadline is left for
        # the close.
        self.event.set()
        self.loop_over.wait(SHUTDOWN_DEADLINE_S / 2)


def run(store: Store, r: redis.Redis, stream: str, group: str, consumer: str,
        count: int, max_idle_s: Optional[float], stop: Stop) -> None:
    source = source_of(stream)
    stored = store.offsets.get(source)
    rewind_group(r, stream, group, stored)
    print(f"ready offset={stored if stored is not None else 'none'}", flush=True)
    idle_since = time.monotonic()
    while not stop.event.is_set():
        if max_idle_s is None:
            block: Optional[int] = READ_BLOCK_MS
        else:
            left_ms = int((max_idle_s - (time.monotonic() - idle_since)) * 1000)
            # (None: no BLOCK at all; redis-py's block=0 would wait forever)
            block = min(left_ms, READ_BLOCK_MS) if left_ms > 0 else None
        entries = read(r, stream, group, consumer, count, block)
        if not entries:
            if max_idle_s is not None and block is None:
                return  # drained, and idle for max_idle_s
            continue
        lsn = consume_entries(store, r, stream, group, entries)
        idle_since = time.monotonic()
        last = entries[-1][0]
        print(f"applied {last} offset={offset_of(last)} entries={len(entries)} "
              f"lsn={lsn if lsn is not None else store.lsn}", flush=True)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Consume a Redis Stream into a rehydrate store, "
                                            "exactly once.")
    p.add_argument("--redis-url", required=True, help="e.g. redis://127.0.0.1:6379/0")
    p.add_argument("--stream", required=True)
    p.add_argument("--group", required=True, help="one group per store")
    p.add_argument("--store", required=True, help="the store's directory")
    p.add_argument("--sync", choices=SYNC_MODES, default="always")
    p.add_argument("--consumer", default=socket.gethostname(),
                   help="consumer name in the group (default: the host name)")
    p.add_argument("--count", type=int, default=100, help="entries per read and batch")
    p.add_argument("--max-idle", type=float, default=None, metavar="SECONDS",
                   help="exit after SECONDS without an entry (0: once drained)")
    p.add_argument("--checkpoint-every-s", type=float, default=None, metavar="SECONDS",
                   help="write a snapshot this often, so a restart replays at most "
                        "that much log")
    p.add_argument("--http-host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=None,
                   help="serve /readyz, /livez and /metrics on this port")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be at least 1")
    if args.max_idle is not None and args.max_idle < 0:
        p.error("--max-idle must be 0 or more")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    stop = Stop()
    try:
        store = Store.open_background(args.store, sync=args.sync,
                                      checkpoint_every_s=args.checkpoint_every_s)
        try:
            handle = stop.install(store)
            server = (store.serve_http(port=args.http_port, host=args.http_host)
                      if args.http_port is not None else None)
            try:
                while not store.wait_ready(timeout=READ_BLOCK_MS / 1000):
                    if stop.event.is_set():
                        return 0  # stopped during the open
                r = redis.Redis.from_url(args.redis_url, decode_responses=True)
                try:
                    run(store, r, args.stream, args.group, args.consumer, args.count,
                        args.max_idle, stop)
                finally:
                    r.close()
            finally:
                stop.loop_over.set()
                if server is not None:
                    server.close()
                handle.uninstall()  # (a shutdown under way goes on, and exits)
        finally:
            store.close()  # (waits for a shutdown's close under way)
    except (RehydrateError, redis.RedisError) as e:
        print(f"redis_stream_consumer: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
