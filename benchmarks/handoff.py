"""Write unavailability during a handoff, and a standby's lag (docs/replication.md).

    python benchmarks/handoff.py [--keys 1800000] [--handoffs 50] [--rate 20000]
                                 [--quick] [--json OUT] [--plot docs/img/handoff.png]

**What is measured.** A load generator (a thread of this process) writes at a
fixed rate (``--rate`` writes/s, in batches of ``--batch`` writes paced by a
deadline schedule) to "the current primary" of a system, overwriting random
keys of a state of ``--keys`` keys with 32-byte values. Meanwhile the main
thread hands the writes over from one primary to another ``--handoffs``
times. For each handoff, from the writer's side:

    gap = (first write acknowledged by the new primary)
          - (the moment the writer tried the first write that the old primary
             did not acknowledge: held, refused, or not sent because the
             handoff had started)

Every system is a small class with ``start()``, ``write(key, value)`` (and a
pipelined ``write_batch``), ``handoff()`` (returns when the system is ready
for the next one) and ``stop()``; each acknowledgement carries the
*generation* of the primary that took it (0, then +1 per handoff), which is
all the framework needs to find the gaps. Systems:

- ``redis_pair`` (baseline): two Debian ``redis-server`` processes on
  127.0.0.1, a master and a ``REPLICAOF`` replica, handed over by hand:
  writes are held, ``WAIT 1 <ms>`` on the writer's connection (WAIT counts
  that connection's writes), ``REPLICAOF NO ONE`` on the replica, the writer
  switches. Then the old master becomes a replica of the new one and the
  next handoff waits for its ``master_link_status:up`` (so handoffs
  alternate direction).
- ``cold_restart`` (baseline): the store lives in a worker process; the
  handoff holds the writes, tells it to close, tells a second worker to open
  the same directory, and switches. The second worker was started (and has
  imported rehydrate) before the handoff, so the gap is close + open +
  the first write, not Python's start: the kindest cold restart.
- ``rehydrate_local``: a primary and a ``Store.open_standby(path,
  source=None)`` in two worker processes on one directory; the handoff is
  ``standby.promote(timeout_s, hold_s)``; the old primary holds the writes
  and refuses them with ``rehydrate.MovedError``, on which the writer
  switches to the new primary (retrying while it still says
  ``ReadOnlyError``). The old primary's worker then closes its moved store
  and opens a standby on the directory for the next handoff.
- ``rehydrate_http``: the same over HTTP on 127.0.0.1: the primary serves
  ``serve_http(0, replication=True, token=...)``, the standby is
  ``Store.open_standby(own_dir, source="http://127.0.0.1:PORT", token=...)``;
  after a handoff the old side bootstraps a fresh standby directory from the
  new primary.

The two rehydrate systems and the lag measurement need ``Store.open_standby``;
on a build without it they are reported as skipped and the baselines run
alone.

**Why each store runs in its own worker process** (``--worker``, speaking
length-prefixed msgpack over a Unix socket): in a real deploy the writer
(a client) and each store are separate processes, and a handoff is between
processes. Keeping a store in the load generator's process would put its
hold, fence and promote under the same GIL as the load generator (each
would delay the other), and a cold restart needs a new process anyway. The
price is one IPC round trip per batch (tens of microseconds), which the
Redis pair pays too (TCP on loopback), so the systems are compared like for
like.

**Lag** (``rehydrate_local`` / ``rehydrate_http``): a primary in this
process writes ``--lag-rate`` records/s in batches of ``--lag-batch`` on a
deadline schedule; after each commit it sends (batch LSN, commit time) to a
standby worker, which calls ``standby.wait_for_lsn(lsn)`` and records
``perf_counter() - commit time`` (CLOCK_MONOTONIC, one clock for every
process on the host). A probe that arrives after its LSN was applied
counts the time it took to arrive: an upper bound, counted apart.

**Fairness.** All the systems are started once and stay up; the handoffs
run in ``--rounds`` rounds, each system taking its turn in every round, so
the machine's noise falls on all of them alike. Every process is started
here and stopped by its PID; servers bind 127.0.0.1 only.
"""

from __future__ import annotations

import abc
import argparse
import gc
import json
import math
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine  # noqa: E402

ME = os.path.abspath(__file__)
TABLE = "kv"
TOKEN = "handoff-bench-token"  # a test token for 127.0.0.1; never a secret
NO_STANDBY = "skipped: no standby support in this build (rehydrate.Store has no open_standby)"
# Targets from the issue: (median ms, p99 ms) of the gap, p99 ms of the lag.
TARGETS = {"rehydrate_local": (3.0, 10.0), "rehydrate_http": (5.0, 20.0)}
LAG_TARGET_P99_MS = 20.0
BASELINES = ("redis_pair", "cold_restart")
SYSTEMS = ("redis_pair", "cold_restart", "rehydrate_local", "rehydrate_http")

perf = time.perf_counter  # CLOCK_MONOTONIC on Linux: comparable across processes

# One acknowledgement: (generation of the primary that took the write, time).
Ack = tuple[int, float]


class HandoffFailed(Exception):
    """The system's handoff did not happen (the writes stayed where they were)."""


# --------------------------------------------------------------------- wire
# Parent <-> worker: 4-byte big-endian length + one msgpack object.

def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("worker closed the connection")
        got += k
    return bytes(buf)


def send_msg(sock: socket.socket, obj: Any) -> None:
    import msgpack

    body = msgpack.packb(obj, use_bin_type=True)
    sock.sendall(struct.pack(">I", len(body)) + body)


def recv_msg(sock: socket.socket) -> Any:
    import msgpack

    (n,) = struct.unpack(">I", _recv_exact(sock, 4))
    return msgpack.unpackb(_recv_exact(sock, n), raw=False)


# ------------------------------------------------------------------- worker
class _WorkerState:
    """What a worker process holds: at most one store (primary, standby or
    moved) and its HTTP server; every connection's thread shares it."""

    def __init__(self) -> None:
        import rehydrate as rh

        self.rh = rh
        self.store: Any = None
        self.http: Any = None
        self.lags: list[float] = []
        self.on_arrival = 0

    def _close(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def handle(self, msg: list[Any]) -> Optional[dict[str, Any]]:
        op: str = msg[0]
        arg: Any = msg[1] if len(msg) > 1 else None
        rh = self.rh
        if op == "put":
            # One put per write, as independent clients would make them; at
            # the first refusal the rest of the batch is left to the caller.
            put, lsns = self.store.put, []
            try:
                for key, value in arg:
                    lsns.append(put(TABLE, key, value))
            except Exception as e:  # the caller decides what a refusal means
                return {"ok": False, "lsns": lsns, "error": type(e).__name__,
                        "detail": str(e)[:300], "address": getattr(e, "address", None)}
            return {"ok": True, "lsns": lsns}
        if op == "probe":  # lag probe: no reply, so the primary never waits on us
            lsn, t_commit = msg[1], msg[2]
            if self.store.lag["lsn"] >= lsn:
                self.on_arrival += 1
            ok = self.store.wait_for_lsn(lsn, 10.0)
            self.lags.append(perf() - t_commit if ok else math.inf)
            return None
        t0 = perf()
        out: dict[str, Any] = {"ok": True}
        if op == "open":
            self.store = rh.Store.open(arg["dir"], sync=arg["sync"])
            # The open's phases, to say where a cold restart's time goes.
            rep = self.store.warmup_report
            out["phases"] = {ph["name"]: ph["duration_s"] for ph in rep["phases"]}
            out["replayed"] = self.store.recovery_report.applied
        elif op == "open_standby":
            kw = {"source": arg["source"]}
            if arg.get("token"):
                kw["token"] = arg["token"]
            self.store = rh.Store.open_standby(arg["dir"], **kw)
        elif op == "promote":
            res = self.store.promote(timeout_s=arg["timeout_s"], hold_s=arg["hold_s"])
            out["result"] = json.loads(json.dumps(res, default=str))
        elif op == "serve_http":
            self.http = self.store.serve_http(0, replication=True, token=arg["token"])
            out["port"] = self.http.port
        elif op == "wait_lsn":
            out["reached"] = bool(self.store.wait_for_lsn(arg["lsn"], arg["timeout"]))
        elif op == "close":
            self._close()
        elif op == "info":
            s = self.store
            out.update(role=getattr(s, "role", "primary"), keys=len(s.table(TABLE)))
        elif op == "lag_report":
            out.update(lags=self.lags, on_arrival=self.on_arrival,
                       lag=json.loads(json.dumps(self.store.lag, default=str)))
            self.lags, self.on_arrival = [], 0
        elif op == "exit":
            self._close()
        else:
            raise ValueError(f"unknown op {op!r}")
        out["seconds"] = perf() - t0
        return out


def worker_main(sock_path: str) -> int:
    """``--worker SOCK``: serve one store's requests on a Unix socket, one
    thread per connection, until told to exit."""
    state = _WorkerState()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(8)

    def serve(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    msg = recv_msg(conn)
                except ConnectionError:
                    return
                try:
                    reply = state.handle(msg)
                except Exception as e:
                    reply = {"ok": False, "error": type(e).__name__, "detail": str(e)[:300],
                             "address": getattr(e, "address", None)}
                if reply is not None:
                    send_msg(conn, reply)
                if msg[0] == "exit":
                    os._exit(0)  # replied: nothing else of ours needs to run

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


class Worker:
    """A worker process started by this benchmark and stopped by its PID."""

    def __init__(self, work: str, name: str) -> None:
        self.sock_path = os.path.join(work, f"{name}.sock")
        if os.path.exists(self.sock_path):
            os.unlink(self.sock_path)
        self.proc = subprocess.Popen([sys.executable, ME, "--worker", self.sock_path],
                                     stdout=subprocess.DEVNULL)
        self.ctl = self.connect(timeout_s=60.0)

    def connect(self, timeout_s: float = 10.0) -> socket.socket:
        end = perf() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.proc.pid} exited with {self.proc.returncode}")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.sock_path)
                return s
            except OSError:
                s.close()
                if perf() > end:
                    raise
                time.sleep(0.01)  # not listening yet (still importing)

    def call(self, *msg: Any, sock: Optional[socket.socket] = None) -> dict[str, Any]:
        s = sock or self.ctl
        send_msg(s, list(msg))
        reply: dict[str, Any] = recv_msg(s)
        return reply

    def check(self, *msg: Any) -> dict[str, Any]:
        r = self.call(*msg)
        if not r["ok"]:
            raise RuntimeError(f"worker {msg[0]}: {r['error']}: {r.get('detail')}")
        return r

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("exit")
            except OSError:
                pass  # already gone: the wait below says so
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)  # by PID, never by name
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.ctl.close()


# -------------------------------------------------------------------- redis
class RespError(Exception):
    pass


class Resp:
    """A Redis connection speaking RESP over a raw socket (no redis-py)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf, self.pos = bytearray(), 0

    @staticmethod
    def encode(*parts: bytes | str | int) -> bytes:
        out = [b"*%d\r\n" % len(parts)]
        for p in parts:
            b = p if isinstance(p, bytes) else str(p).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(out)

    def _fill(self) -> None:
        if self.pos:
            del self.buf[:self.pos]
            self.pos = 0
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buf += chunk

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line = bytes(self.buf[self.pos:i])
                self.pos = i + 2
                return line
            self._fill()

    def reply(self) -> Any:
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return RespError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) - self.pos < n + 2:
                self._fill()
            data = bytes(self.buf[self.pos:self.pos + n])
            self.pos += n + 2
            return data
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RespError(f"bad reply {line!r}")

    def call(self, *parts: bytes | str | int) -> Any:
        self.sock.sendall(self.encode(*parts))
        r = self.reply()
        if isinstance(r, RespError):
            raise r
        return r

    def close(self) -> None:
        self.sock.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop_proc(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # by PID, never by name
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _poll(pred: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.001) -> None:
    """Poll ``pred`` until true, at most ``timeout_s`` (a bound: a benchmark
    must not hang on a server that never gets there)."""
    end = perf() + timeout_s
    while not pred():
        if perf() > end:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(every_s)


def _info_field(conn: Resp, section: str, field: str) -> str:
    text: str = conn.call("INFO", section).decode()
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return ""


# ------------------------------------------------------------------ systems
class System(abc.ABC):
    """One way of handing writes over. ``generation`` is the primary that
    takes writes now: 0 at start, +1 per handoff."""

    name = "system"

    def __init__(self) -> None:
        self.generation = 0
        self.acked_generation = 0  # the newest generation that acknowledged a write

    def wait_writer(self, generation: int, timeout_s: float = 10.0) -> None:
        """Wait until the writer has a write acknowledged by ``generation``:
        a handoff re-arms (resyncs, spawns, reopens) only after its gap has
        closed, so that this process's work for the next handoff does not
        compete with the writer's thread for the GIL inside the gap."""
        _poll(lambda: self.acked_generation >= generation, timeout_s,
              f"{self.name}: first write on generation {generation}", 0.0002)

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def write(self, key: str, value: bytes) -> Ack:
        """Write once, through whatever the handoff does; return who took it."""

    def write_batch(self, items: Sequence[tuple[str, bytes]]) -> list[Ack]:
        """Several writes, in order (systems pipeline them: one round trip)."""
        return [self.write(k, v) for k, v in items]

    @abc.abstractmethod
    def handoff(self) -> dict[str, Any]:
        """Hand the writes over; return when ready for the next handoff, with
        the system's own figures."""

    @abc.abstractmethod
    def stop(self) -> None: ...


def _single(system: System, key: str, value: bytes) -> Ack:
    return system.write_batch([(key, value)])[0]


class RedisPair(System):
    """A master and a REPLICAOF replica, handed over by hand (see module doc)."""

    name = "redis_pair"

    def __init__(self, work: str, keys: int, values: Callable[[int], bytes],
                 wait_ms: int) -> None:
        super().__init__()
        self.work, self.keys, self.values, self.wait_ms = work, keys, values, wait_ms
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self.data: list[Resp] = []  # the writer's connection to each server
        self.ctl: list[Resp] = []   # the handoff's control connections
        self.cur = 0
        self.lock = threading.Lock()  # held while a batch is in flight / a handoff holds
        self.unsafe = 0  # handoffs whose WAIT saw no replica acknowledge

    def _spawn(self, i: int, replica_of: Optional[int]) -> None:
        d = os.path.join(self.work, f"redis{i}")
        os.makedirs(d, exist_ok=True)
        port = _free_port()
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", d,
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--protected-mode", "yes"]
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        self.ports.append(port)
        end = perf() + 60
        while True:
            try:
                self.ctl.append(Resp(port))
                break
            except OSError:
                if perf() > end:
                    raise
                time.sleep(0.01)  # not listening yet
        _poll(lambda: self.ctl[i].call("PING") == "PONG", 120, "redis PING", 0.01)
        self.data.append(Resp(port))

    def start(self) -> None:
        if not shutil.which("redis-server"):
            raise FileNotFoundError("redis-server is not on PATH")
        self._spawn(0, None)
        m = self.ctl[0]
        # Load the state with MSET, 1,000 keys per command, pipelined.
        step, pending = 1000, 0
        for start in range(0, self.keys, step):
            parts: list[bytes | str | int] = ["MSET"]
            for i in range(start, min(start + step, self.keys)):
                parts += [f"key:{i}", self.values(i)]
            m.sock.sendall(Resp.encode(*parts))
            pending += 1
            if pending == 50:
                for _ in range(pending):
                    m.reply()
                pending = 0
        for _ in range(pending):
            m.reply()
        self._spawn(1, self.ports[0])
        _poll(lambda: _info_field(self.ctl[1], "replication", "master_link_status") == "up",
              300, "initial replica sync", 0.05)

    def write(self, key: str, value: bytes) -> Ack:
        return _single(self, key, value)

    def write_batch(self, items: Sequence[tuple[str, bytes]]) -> list[Ack]:
        payload = b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                           % (len(k), k.encode(), len(v), v) for k, v in items)
        with self.lock:  # a handoff in progress holds this: the writes wait, unsent
            conn, gen = self.data[self.cur], self.generation
            conn.sock.sendall(payload)
            acks = []
            for _ in items:
                r = conn.reply()
                if isinstance(r, RespError):
                    raise r
                acks.append((gen, perf()))
            self.acked_generation = gen
            return acks

    def handoff(self) -> dict[str, Any]:
        old, new = self.cur, 1 - self.cur
        with self.lock:
            t0 = perf()
            # WAIT counts the writes of the connection it is sent on: the writer's.
            acked = self.data[old].call("WAIT", 1, self.wait_ms)
            t_wait = perf()
            self.ctl[new].call("REPLICAOF", "NO", "ONE")
            self.cur, self.generation = new, self.generation + 1
            t_switch = perf()
        if acked < 1:
            self.unsafe += 1  # writes may be lost: counted and reported
        self.wait_writer(self.generation)
        # Outside the hold: the old master follows the new one, in sync
        # before the next handoff.
        t1 = perf()
        self.ctl[old].call("REPLICAOF", "127.0.0.1", self.ports[new])
        _poll(lambda: _info_field(self.ctl[old], "replication", "master_link_status") == "up",
              120, "old master following the new one")
        return {"wait_s": t_wait - t0, "promote_s": t_switch - t_wait,
                "held_s": t_switch - t0, "resync_s": perf() - t1, "replicas_acked": acked}

    def stop(self) -> None:
        for c in self.data + self.ctl:
            c.close()
        for p in self.procs:
            _stop_proc(p)

    def final_check(self) -> dict[str, Any]:
        return {"dbsize": [c.call("DBSIZE") for c in self.ctl], "unsafe_handoffs": self.unsafe}


class ColdRestart(System):
    """Close the primary's process, open the directory in a new one."""

    name = "cold_restart"

    def __init__(self, work: str, state_dir: str, sync: str) -> None:
        super().__init__()
        self.work, self.dir, self.sync = work, state_dir, sync
        self.n = 0
        self.cur: Optional[Worker] = None
        self.data: Optional[socket.socket] = None
        self.spare: Optional[Worker] = None
        self.lock = threading.Lock()

    def _worker(self) -> Worker:
        self.n += 1
        return Worker(self.work, f"cold{self.n}")

    def start(self) -> None:
        self.cur = self._worker()
        self.cur.check("open", {"dir": self.dir, "sync": self.sync})
        self.data = self.cur.connect()
        # Started and past its imports before the handoff: see the module doc.
        self.spare = self._worker()

    def write(self, key: str, value: bytes) -> Ack:
        return _single(self, key, value)

    def write_batch(self, items: Sequence[tuple[str, bytes]]) -> list[Ack]:
        with self.lock:  # a handoff in progress holds this
            assert self.cur is not None
            r = self.cur.call("put", [list(x) for x in items], sock=self.data)
            t = perf()
            if not r["ok"]:
                raise RuntimeError(f"cold restart write: {r['error']}: {r['detail']}")
            self.acked_generation = self.generation
            return [(self.generation, t)] * len(items)

    def handoff(self) -> dict[str, Any]:
        assert self.cur is not None and self.spare is not None and self.data is not None
        old = self.cur
        with self.lock:
            t0 = perf()
            close_s = old.check("close")["seconds"]
            t1 = perf()
            opened = self.spare.check("open", {"dir": self.dir, "sync": self.sync})
            self.data.close()
            self.cur, self.spare = self.spare, None
            self.data = self.cur.connect()
            self.generation += 1
            t2 = perf()
        self.wait_writer(self.generation)
        old.stop()
        self.spare = self._worker()
        return {"close_s": close_s, "open_s": opened["seconds"], "replayed": opened["replayed"],
                **{f"open_{k}_s": v for k, v in opened["phases"].items()}, "close_rtt_s": t1 - t0,
                "open_rtt_s": t2 - t1, "held_s": t2 - t0}

    def stop(self) -> None:
        if self.data is not None:
            self.data.close()
        for w in (self.cur, self.spare):
            if w is not None:
                w.stop()

    def final_check(self) -> dict[str, Any]:
        assert self.cur is not None
        return {"keys": self.cur.check("info")["keys"]}


class RehydrateStandby(System):
    """A primary and a standby (``source=None`` or HTTP), handed over with
    ``standby.promote``; the writer follows ``MovedError``."""

    RETRY_S = 0.0001  # the new primary says ReadOnlyError until it has taken over

    def __init__(self, work: str, state_dir: str, sync: str, http: bool,
                 timeout_s: float, hold_s: float) -> None:
        super().__init__()
        self.name = "rehydrate_http" if http else "rehydrate_local"
        self.work, self.sync, self.http = work, sync, http
        self.timeout_s, self.hold_s = timeout_s, hold_s
        self.dirs = [state_dir, ""]
        self.workers: list[Worker] = []
        self.data: list[socket.socket] = []
        self.cur = 0
        self.last_lsn = 0
        self.port = 0
        self.n = 0
        self.addresses: list[Any] = []

    def _standby_dir(self) -> str:
        if not self.http:
            return self.dirs[0]  # source=None follows the primary's own directory
        self.n += 1
        return os.path.join(self.work, f"{self.name}-standby{self.n}")

    def _open_standby(self, i: int) -> None:
        self.dirs[i] = self._standby_dir()
        arg: dict[str, Any] = {"dir": self.dirs[i], "source": None}
        if self.http:
            arg.update(source=f"http://127.0.0.1:{self.port}", token=TOKEN)
        self.workers[i].check("open_standby", arg)
        r = self.workers[i].check("wait_lsn", {"lsn": self.last_lsn, "timeout": 300.0})
        if not r["reached"]:
            raise RuntimeError("standby did not catch up within 300 s")

    def start(self) -> None:
        self.workers = [Worker(self.work, f"{self.name}0"), Worker(self.work, f"{self.name}1")]
        self.data = [w.connect() for w in self.workers]
        self.workers[0].check("open", {"dir": self.dirs[0], "sync": self.sync})
        if self.http:
            self.port = self.workers[0].check("serve_http", {"token": TOKEN})["port"]
        self.write("key:0", b"\0" * 32)  # an LSN for the standby to catch up to
        self._open_standby(1)

    def write(self, key: str, value: bytes) -> Ack:
        return _single(self, key, value)

    def write_batch(self, items: Sequence[tuple[str, bytes]]) -> list[Ack]:
        acks: list[Ack] = []
        todo = [list(x) for x in items]
        end = perf() + self.timeout_s + self.hold_s + 5
        while todo:
            r = self.workers[self.cur].call("put", todo, sock=self.data[self.cur])
            t = perf()
            done = len(r["lsns"])
            if done:
                acks += [(self.generation, t)] * done
                self.acked_generation = self.generation
                self.last_lsn = r["lsns"][-1]
                todo = todo[done:]
            if r["ok"]:
                break
            if r["error"] == "MovedError":  # the old primary handed over: follow it
                self.addresses.append(r.get("address"))
                self.cur, self.generation = 1 - self.cur, self.generation + 1
            elif r["error"] != "ReadOnlyError" or perf() > end:
                raise RuntimeError(f"{self.name} write: {r['error']}: {r.get('detail')}")
            else:
                time.sleep(self.RETRY_S)
        return acks

    def handoff(self) -> dict[str, Any]:
        old, new, gen = self.cur, 1 - self.cur, self.generation
        r = self.workers[new].call("promote", {"timeout_s": self.timeout_s,
                                               "hold_s": self.hold_s})
        if not r["ok"]:
            raise HandoffFailed(f"{r['error']}: {r.get('detail')}")
        # The writer switches at its next write (the old primary refuses it)
        # and retries on the new one; only then does the old side re-arm.
        self.wait_writer(gen + 1)
        t0 = perf()
        if self.http:
            self.port = self.workers[new].check("serve_http", {"token": TOKEN})["port"]
        self.workers[old].check("close")
        if self.http and self.dirs[old]:
            shutil.rmtree(self.dirs[old], ignore_errors=True)  # moved; a fresh one follows
        self._open_standby(old)
        return {"promote": r["result"], "promote_rtt_s": r["seconds"],
                "restandby_s": perf() - t0}

    def stop(self) -> None:
        for s in self.data:
            s.close()
        for w in self.workers:
            w.stop()

    def final_check(self) -> dict[str, Any]:
        info = [w.check("info") for w in self.workers]
        return {"roles": [i["role"] for i in info], "keys": [i["keys"] for i in info],
                "moved_addresses": self.addresses[:3]}


# ------------------------------------------------------------ the framework
class LoadGenerator(threading.Thread):
    """Writes at ``rate``/s: write i is due at ``t0 + i / rate``. Each round
    trip sends every write that is due (at most ``max_batch``), so a write
    waits at most one round trip (or one sleep, when none is due) before it
    is tried: fixed batches of n would hide a hold shorter than n / rate
    between two sends. Behind schedule (after a held handoff) it sends the
    backlog, as clients with their own fixed rate would. Each send records
    (when its first write was due, when it was tried, the acknowledgements)."""

    def __init__(self, system: System, rate: int, max_batch: int, keys: int,
                 values: list[bytes], seed: int) -> None:
        super().__init__(name=f"load-{system.name}", daemon=True)
        self.system, self.rate, self.max_batch = system, rate, max_batch
        self.keys, self.values = keys, values
        self.rng = random.Random(seed)
        self.records: list[tuple[float, float, list[Ack]]] = []
        self.halt = threading.Event()
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        rate, rng, keys, values, nv = self.rate, self.rng, self.keys, self.values, len(self.values)
        t0, issued = perf(), 0
        try:
            while not self.halt.is_set():
                now = perf()
                due = min(int((now - t0) * rate) + 1 - issued, self.max_batch)
                if due <= 0:
                    time.sleep(t0 + issued / rate - now)
                    continue
                items = [(f"key:{rng.randrange(keys)}", values[rng.randrange(nv)])
                         for _ in range(due)]
                t_attempt = perf()
                acks = self.system.write_batch(items)
                self.records.append((t0 + issued / rate, t_attempt, acks))
                issued += due
        except BaseException as e:  # reported by the round that ran us
            self.error = e


def gaps_of(records: list[tuple[float, float, list[Ack]]],
            events: list[dict[str, Any]]) -> None:
    """Fill each handoff event's gap: the first acknowledgement by the new
    generation minus the attempt time of the batch holding it (the writer
    is sequential, so that batch holds the first write the old primary did
    not take)."""
    for ev in events:
        g = ev["gen_after"]
        for t_sched, t_attempt, acks in records:
            news = [t for gen, t in acks if gen == g]
            if news:
                ev["gap_s"] = min(news) - t_attempt
                ev["held_from"] = t_attempt
                ev["first_ack"] = min(news)
                break


def run_round(system: System, n: int, args: argparse.Namespace, values: list[bytes],
              seed: int) -> dict[str, Any]:
    gen = LoadGenerator(system, args.rate, args.batch, args.keys, values, seed)
    events: list[dict[str, Any]] = []
    failures: list[str] = []
    # The harness's own pauses would show up as gaps: no collector pauses,
    # and a thread waiting for the GIL gets it within 0.5 ms, not 5 ms.
    gc.disable()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        gen.start()
        time.sleep(args.warm)
        for _ in range(n):
            if gen.error is not None:
                break
            g0 = system.generation
            t0 = perf()
            try:
                info = system.handoff()
            except HandoffFailed as e:
                failures.append(str(e))
                continue
            events.append({"start": t0, "end": perf(), "gen_after": g0 + 1, "info": info})
            time.sleep(args.spacing)
    finally:
        gen.halt.set()
        gen.join(timeout=60)
        sys.setswitchinterval(switch)
        gc.enable()
    if gen.error is not None:
        raise RuntimeError(f"load generator: {type(gen.error).__name__}: {gen.error}")
    gaps_of(gen.records, events)
    writes = sum(len(a) for _, _, a in gen.records)
    span = gen.records[-1][1] - gen.records[0][0] if gen.records else 0.0
    return {"events": events, "failures": failures, "records": gen.records,
            "writes": writes, "rate_achieved": writes / span if span else 0.0}


def _pct(xs: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(xs, dtype=float), q)) if xs else math.nan


def summarize(gaps_s: list[float]) -> dict[str, float]:
    ms = [g * 1e3 for g in gaps_s]
    return {"n": len(ms), "median_ms": _pct(ms, 50), "p95_ms": _pct(ms, 95),
            "p99_ms": _pct(ms, 99), "max_ms": max(ms) if ms else math.nan,
            "min_ms": min(ms) if ms else math.nan}


def timeline(records: list[tuple[float, float, list[Ack]]], ev: dict[str, Any],
             next_start: float = math.inf) -> dict[str, Any]:
    """Client-visible latency (acknowledgement - scheduled time) of the
    batches around one handoff, times relative to the handoff's start."""
    span = max(ev["gap_s"], 0.001)  # the plot shows [-2, +4] x the gap (at least 1 ms)
    t0, lo = ev["start"], ev["start"] - 2 * span
    hi = min(ev["start"] + 4 * span, next_start)  # not into the next handoff
    pts = [(s - t0, max(t for _, t in a) - s) for s, _, a in records if lo <= s <= hi and a]
    return {"t_ms": [p[0] * 1e3 for p in pts], "latency_ms": [p[1] * 1e3 for p in pts],
            "held_from_ms": (ev["held_from"] - t0) * 1e3,
            "first_ack_ms": (ev["first_ack"] - t0) * 1e3,
            "end_ms": (ev["end"] - t0) * 1e3, "gap_ms": ev["gap_s"] * 1e3,
            "window_ms": [(lo - t0) * 1e3, (hi - t0) * 1e3]}


# ----------------------------------------------------------------- the state
def build_state(path: str, keys: int, values: Callable[[int], bytes]) -> dict[str, Any]:
    """``keys`` keys (``key:N``, 32-byte values) and one checkpoint, so that
    every open loads a snapshot and replays only what the run wrote."""
    import rehydrate as rh

    t0 = perf()
    with rh.Store.open(path, sync="none") as store:
        for start in range(0, keys, 50_000):
            with store.batch() as b:
                for i in range(start, min(start + 50_000, keys)):
                    b.put(TABLE, f"key:{i}", values(i))
        cp = store.checkpoint()
    return {"build_s": perf() - t0, "snapshot_bytes": cp.get("bytes")}


def has_standby() -> bool:
    import rehydrate as rh

    return hasattr(rh.Store, "open_standby")


# ---------------------------------------------------------------------- lag
def measure_lag(work: str, build_dir: str, http: bool, args: argparse.Namespace,
                values: list[bytes], interval_ms: float) -> dict[str, Any]:
    """A primary here writing ``lag_rate`` records/s in batches; a standby in
    a worker timing each batch from commit to ``wait_for_lsn`` returning.
    ``interval_ms``: the primary's ``sync_interval_ms``: a standby sees a
    record when the primary's flush writes its frame (docs/replication.md,
    "What the lag is made of")."""
    import rehydrate as rh

    name = f"{'http' if http else 'local'}-{interval_ms:g}ms"
    pdir = os.path.join(work, f"lag-{name}-primary")
    shutil.copytree(build_dir, pdir)
    primary = rh.Store.open(pdir, sync=args.sync, sync_interval_ms=interval_ms)
    srv: Any = None
    w = Worker(work, f"lag-{name}")
    try:
        arg: dict[str, Any] = {"dir": pdir, "source": None}
        if http:
            # Through a dict: this build's Store.serve_http may not take them yet.
            repl: dict[str, Any] = {"replication": True, "token": TOKEN}
            srv = primary.serve_http(0, **repl)
            arg = {"dir": os.path.join(work, f"lag-{name}-standby"),
                   "source": f"http://127.0.0.1:{srv.port}", "token": TOKEN}
        lsn = primary.put(TABLE, "key:0", values[0])
        w.check("open_standby", arg)
        if not w.check("wait_lsn", {"lsn": lsn, "timeout": 300.0})["reached"]:
            raise RuntimeError("standby did not catch up")
        probe = w.connect()
        rng = random.Random(5)
        keys = [f"key:{rng.randrange(args.keys)}" for _ in range(65_536)]
        nb = max(1, int(args.lag_seconds * args.lag_rate / args.lag_batch))
        period, k, nk, nv = args.lag_batch / args.lag_rate, 0, len(keys), len(values)
        commit_s: list[float] = []
        gc.disable()
        next_t = perf()
        try:
            for _ in range(nb):
                delay = next_t - perf()
                if delay > 0:
                    time.sleep(delay)
                t_b = perf()
                with primary.batch() as b:
                    for _ in range(args.lag_batch):
                        b.put(TABLE, keys[k % nk], values[k % nv])
                        k += 1
                t_commit = perf()
                commit_s.append(t_commit - t_b)
                send_msg(probe, ["probe", b.lsn, t_commit])
                next_t += period
        finally:
            gc.enable()
        rep = w.call("lag_report", sock=probe)
        probe.close()
        lags = [x * 1e3 for x in rep["lags"]]
        return {"batches": nb, "records_per_s": args.lag_rate, "batch": args.lag_batch,
                "sync_interval_ms": interval_ms,
                "median_ms": _pct(lags, 50), "p99_ms": _pct(lags, 99), "max_ms": max(lags),
                "probes_after_apply": rep["on_arrival"], "final_lag": rep["lag"],
                "commit_median_ms": _pct(commit_s, 50) * 1e3,
                "target_p99_ms": LAG_TARGET_P99_MS,
                "p99_over_target": _pct(lags, 99) / LAG_TARGET_P99_MS}
    finally:
        w.stop()
        if srv is not None:
            srv.close()
        primary.close()
        shutil.rmtree(pdir, ignore_errors=True)


# ---------------------------------------------------------------- reporting
def report_text(res: dict[str, Any]) -> str:
    lines = [f"handoff gap (first write held -> first write acknowledged by the new primary): "
             f"{res['keys']:,} keys, {res['rate']:,} writes/s, {res['handoffs']} handoffs "
             f"in {res['rounds']} rounds"]
    head = (f"{'system':<16}{'n':>4}{'median':>10}{'p95':>10}{'p99':>10}{'max':>10}"
            f"  {'target med/p99':<16}{'med/target':>11}{'p99/target':>11}{'med/redis':>10}")
    lines.append(head)
    redis = res["systems"].get("redis_pair", {}).get("gap")
    for name in SYSTEMS:
        if name in res["skipped"]:
            lines.append(f"{name:<16}{res['skipped'][name]}")
            continue
        if name not in res["systems"]:
            continue
        s = res["systems"][name]
        g = s["gap"]
        tgt = TARGETS.get(name)
        tcol = f"{tgt[0]:g} / {tgt[1]:g} ms" if tgt else "baseline"
        r1 = f"{g['median_ms'] / tgt[0]:.2f}" if tgt else ""
        r2 = f"{g['p99_ms'] / tgt[1]:.2f}" if tgt else ""
        rr = f"{g['median_ms'] / redis['median_ms']:.2f}" if redis and redis["n"] else ""
        lines.append(f"{name:<16}{g['n']:>4}{g['median_ms']:>8.3f}ms{g['p95_ms']:>8.3f}ms"
                     f"{g['p99_ms']:>8.3f}ms{g['max_ms']:>8.3f}ms  {tcol:<16}{r1:>11}{r2:>11}"
                     f"{rr:>10}")
        if s["failures"]:
            lines.append(f"{'':<16}{len(s['failures'])} handoff(s) failed: {s['failures'][0]}")
    for name, lag in res["lag"].items():
        if isinstance(lag, str):
            lines.append(f"lag {name}: {lag}")
        else:
            lines.append(f"lag {name}: {lag['records_per_s']:,} records/s in batches of "
                         f"{lag['batch']}: median {lag['median_ms']:.3f} ms, p99 "
                         f"{lag['p99_ms']:.3f} ms (target <= {LAG_TARGET_P99_MS:g} ms: "
                         f"{lag['p99_over_target']:.2f}), max {lag['max_ms']:.3f} ms")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in SYSTEMS if n in res["systems"] and res["systems"][n]["gaps_ms"]]
    rows = max(1, len(names))
    fig = plt.figure(figsize=(13, 2.2 + 2.0 * rows))
    grid = fig.add_gridspec(rows, 2)
    ax1 = fig.add_subplot(grid[:, 0])
    data = [res["systems"][n]["gaps_ms"] for n in names]
    if data:
        ax1.boxplot(data, showfliers=False)
        ax1.set_xticks(range(1, len(names) + 1), names)
        rng = random.Random(1)
        for i, d in enumerate(data, start=1):
            ax1.scatter([i + rng.uniform(-0.15, 0.15) for _ in d], d, s=8, alpha=0.6)
        for n, (med, p99) in TARGETS.items():
            if n in names:
                x = names.index(n) + 1
                ax1.hlines([med, p99], x - 0.3, x + 0.3, colors=["green", "red"],
                           linestyles="dashed")
    ax1.set_yscale("log")
    ax1.set_ylabel("gap: first held write -> first write acknowledged (ms)")
    ax1.set_title(f"write unavailability per handoff ({res['keys']:,} keys, "
                  f"{res['rate']:,} writes/s)", fontsize=10)
    # One timeline per system, each on its own time scale (the gaps differ
    # by two orders of magnitude between systems).
    for row, n in enumerate(names):
        ax = fig.add_subplot(grid[row, 1])
        tl = res["systems"][n]["timeline"]
        if not tl:
            continue
        ax.plot(tl["t_ms"], tl["latency_ms"], ".-", ms=2, lw=0.5)
        ax.axvspan(tl["held_from_ms"], tl["first_ack_ms"], color="red", alpha=0.15,
                   label=f"gap {tl['gap_ms']:.2f} ms")
        ax.axvline(0, color="black", lw=1, label="handoff() called")
        ax.set_xlim(*tl["window_ms"])
        ax.set_yscale("log")
        ax.set_title(f"{n}: the median handoff", fontsize=9)
        ax.set_ylabel("latency (ms)", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
        if row == rows - 1:
            ax.set_xlabel("write scheduled at (ms from the handoff's start); "
                          "latency = acknowledged - scheduled")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=1_800_000)
    p.add_argument("--handoffs", type=int, default=50)
    p.add_argument("--rate", type=int, default=20_000, help="writes/s during the handoffs")
    p.add_argument("--batch", type=int, default=200,
                   help="most writes in one send (the backlog after a long hold)")
    p.add_argument("--rounds", type=int, default=5, help="systems take turns in each round")
    p.add_argument("--spacing", type=float, default=0.2, help="s of writes between handoffs")
    p.add_argument("--warm", type=float, default=0.3, help="s of writes before a round")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--sync", default="interval", help="the rehydrate stores' sync mode")
    p.add_argument("--hold-s", type=float, default=2.0)
    p.add_argument("--timeout-s", type=float, default=5.0)
    p.add_argument("--redis-wait-ms", type=int, default=1000)
    p.add_argument("--lag", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--lag-rate", type=int, default=100_000)
    p.add_argument("--lag-batch", type=int, default=1000)
    p.add_argument("--lag-seconds", type=float, default=10.0)
    p.add_argument("--lag-interval-ms", type=lambda v: [float(x) for x in v.split(",")],
                   default=[50.0, 5.0], metavar="MS[,MS...]",
                   help="the primary's sync_interval_ms for the lag runs (default 50,5: "
                        "the default, and a primary flushing often)")
    p.add_argument("--quick", action="store_true", help="20k keys, 5 handoffs, 1 round")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    p.add_argument("--plot", metavar="PNG")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if args.quick:
        args.keys, args.handoffs, args.rounds, args.lag_seconds = 20_000, 5, 1, 1.0
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    requested = list(chosen)
    bad = [s for s in chosen if s not in SYSTEMS]
    if bad:
        p.error(f"unknown system(s) {bad}; choose from {SYSTEMS}")
    if min(args.keys, args.handoffs, args.rate, args.batch, args.rounds) < 1:
        p.error("--keys, --handoffs, --rate, --batch and --rounds must be positive")

    standby = has_standby()
    skipped: dict[str, str] = {}
    if not standby:
        for s in chosen:
            if s.startswith("rehydrate_"):
                skipped[s] = NO_STANDBY
                print(f"{s}: {NO_STANDBY}", file=sys.stderr)
    if "redis_pair" in chosen and not shutil.which("redis-server"):
        skipped["redis_pair"] = "skipped: redis-server is not on PATH"
    chosen = [s for s in chosen if s not in skipped]

    rng = random.Random(7)
    pool = [rng.randbytes(32) for _ in range(4096)]  # the load's values

    def value_of(i: int) -> bytes:
        return pool[(i * 2654435761) % len(pool)]

    res: dict[str, Any] = {"benchmark": "handoff", "keys": args.keys, "handoffs": args.handoffs,
                           "rate": args.rate, "batch": args.batch, "rounds": args.rounds,
                           "spacing_s": args.spacing, "sync": args.sync,
                           "hold_s": args.hold_s, "timeout_s": args.timeout_s,
                           "systems": {}, "skipped": skipped, "lag": {},
                           "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    work = tempfile.mkdtemp(prefix="rh-handoff-", dir="/tmp")  # short: Unix socket paths
    systems: list[System] = []
    try:
        build_dir = os.path.join(work, "build")
        if any(s != "redis_pair" for s in chosen) or (args.lag and standby):
            print(f"building {args.keys:,} keys ...", file=sys.stderr)
            res["build"] = build_state(build_dir, args.keys, value_of)

        def copy(name: str) -> str:
            d = os.path.join(work, name)
            shutil.copytree(build_dir, d)
            return d

        for name in chosen:
            sysobj: System
            if name == "redis_pair":
                sysobj = RedisPair(work, args.keys, value_of, args.redis_wait_ms)
            elif name == "cold_restart":
                sysobj = ColdRestart(work, copy("cold"), args.sync)
            else:
                sysobj = RehydrateStandby(work, copy(name), args.sync, name == "rehydrate_http",
                                          args.timeout_s, args.hold_s)
            print(f"starting {name} ...", file=sys.stderr)
            t0 = perf()
            try:
                sysobj.start()
            except Exception as e:
                sysobj.stop()
                skipped[name] = f"failed to start: {type(e).__name__}: {e}"
                print(f"{name}: {skipped[name]}", file=sys.stderr)
                continue
            systems.append(sysobj)
            res["systems"][name] = {"start_s": perf() - t0, "events": [], "failures": [],
                                    "writes": 0, "rates": [], "_records": {}}

        per = [args.handoffs // args.rounds + (1 if r < args.handoffs % args.rounds else 0)
               for r in range(args.rounds)]
        for r, n in enumerate(per):
            for i, sysobj in enumerate(list(systems)):
                if n == 0:
                    continue
                out = res["systems"][sysobj.name]
                try:
                    rr = run_round(sysobj, n, args, pool, seed=r * 100 + i)
                except Exception as e:
                    out["error"] = f"{type(e).__name__}: {e}"
                    print(f"{sysobj.name}: round {r + 1} failed: {out['error']}", file=sys.stderr)
                    systems.remove(sysobj)
                    sysobj.stop()
                    continue
                for ev in rr["events"]:
                    ev["round"] = r
                    out["_records"][id(ev)] = rr["records"]
                out["events"] += rr["events"]
                out["failures"] += rr["failures"]
                out["writes"] += rr["writes"]
                out["rates"].append(rr["rate_achieved"])
                gaps = [e["gap_s"] for e in rr["events"] if "gap_s" in e]
                print(f"  round {r + 1}: {sysobj.name:<16} {len(gaps)} handoffs, median gap "
                      f"{_pct(gaps, 50) * 1e3:.3f} ms, {rr['rate_achieved']:,.0f} writes/s",
                      file=sys.stderr)
        for sysobj in systems:
            check = getattr(sysobj, "final_check", None)
            if check is not None:
                res["systems"][sysobj.name]["final_check"] = check()
        for sysobj in list(systems):
            sysobj.stop()
            systems.remove(sysobj)

        for name, out in res["systems"].items():
            evs = [e for e in out["events"] if "gap_s" in e]
            out["gaps_ms"] = [e["gap_s"] * 1e3 for e in evs]
            out["gap"] = summarize([e["gap_s"] for e in evs])
            out["rate_achieved"] = _pct(out.pop("rates"), 50) if out.get("rates") else 0.0
            out["timeline"] = None
            if evs:
                med = sorted(evs, key=lambda e: e["gap_s"])[len(evs) // 2]
                later = [e["start"] for e in out["events"]
                         if e["round"] == med["round"] and e["start"] > med["start"]]
                out["timeline"] = timeline(out["_records"][id(med)], med,
                                           min(later, default=math.inf))
            if name in TARGETS and out["gap"]["n"]:
                med_t, p99_t = TARGETS[name]
                out["target"] = {"median_ms": med_t, "p99_ms": p99_t,
                                 "median_ratio": out["gap"]["median_ms"] / med_t,
                                 "p99_ratio": out["gap"]["p99_ms"] / p99_t}
            out["handoff_info"] = [e["info"] for e in out["events"]]
            out["events"] = [{"round": e["round"], "gap_ms": e.get("gap_s", math.nan) * 1e3,
                              "handoff_s": e["end"] - e["start"]} for e in out["events"]]
            del out["_records"]

        for name, http in (("local", False), ("http", True)):
            key = f"rehydrate_{name}"
            if not args.lag or key not in requested:
                continue
            if not standby:
                res["lag"][key] = NO_STANDBY
                continue
            for interval_ms in args.lag_interval_ms:
                at = f"{key}@{interval_ms:g}ms"
                print(f"lag {name}, primary flushing every {interval_ms:g} ms ...",
                      file=sys.stderr)
                try:
                    res["lag"][at] = measure_lag(work, build_dir, http, args, pool, interval_ms)
                except Exception as e:
                    res["lag"][at] = f"failed: {type(e).__name__}: {e}"

        print(report_text(res))
        if args.plot:
            plot(res, args.plot)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1, default=str)
        return 0
    finally:
        for sysobj in systems:
            try:
                sysobj.stop()
            except Exception as e:  # stop the others all the same
                print(f"stopping {sysobj.name}: {e}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
