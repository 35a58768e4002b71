"""The cold starts ``rehydrate bench`` times: ours and the baselines'.

Each Python one runs in a fresh process (``python -m rehydrate.bench.child
KIND PATH``), so nothing is warm but the OS page cache, the same for all.
Redis is timed from the server's start until ``PING`` answers ``PONG``
(it answers ``-LOADING`` while it reads its files); it is started on
127.0.0.1 on a free port, with its own directory, and stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

PYTHON_BASELINES = ("python_msgpack_dict", "pickle_load", "sqlite")
REDIS_BASELINES = ("redis_aof", "redis_rdb")


class BaselineError(Exception):
    """A baseline that could not be measured (reported, the rest go on)."""


def peak_rss_bytes() -> int:
    """This process's peak RSS (VmHWM; ru_maxrss would carry a parent's over exec)."""
    from .._sysinfo import proc_kb_field

    kb = proc_kb_field("/proc/self/status", "VmHWM")
    return kb if kb is not None else 0


def child(kind: str, path: str) -> dict:
    """One cold start of ``kind`` in this (fresh) process."""
    t0 = time.perf_counter()
    if kind == "rehydrate":
        import rehydrate as rh

        s = rh.Store.open(path, warmup=rh.Warmup(listeners=[]))
        seconds = time.perf_counter() - t0
        report = s.warmup_report
        phases = {p["name"]: p["duration_s"] for p in report["phases"]}
        # What is not a phase: the lock, opening the log for writing, HISTORY.
        phases["other"] = max(0.0, seconds - sum(phases.values()))
        out = {"seconds": seconds, "keys": len(s.table("kv")) if "kv" in s.tables() else 0,
               "phases": phases,
               "records": next(p.get("records", 0) for p in report["phases"]
                               if p["name"] == "replay"),
               "core": rh._backend.core().IMPLEMENTATION}
        s.close()
    elif kind == "python_msgpack_dict":
        import msgpack

        state: dict = {}
        with open(path, "rb") as f:
            for op, k, v in msgpack.Unpacker(f, raw=False, use_list=False):
                if op == 0:
                    state[k] = v
                elif op == 1:
                    state[k] = state.get(k, 0) + v
                else:
                    state.pop(k, None)
        out = {"seconds": time.perf_counter() - t0, "keys": len(state)}
    elif kind == "pickle_load":
        import pickle

        with open(path, "rb") as f:
            state = pickle.load(f)
        out = {"seconds": time.perf_counter() - t0, "keys": len(state)}
    elif kind == "sqlite":
        import sqlite3

        db = sqlite3.connect(path)
        try:
            state = dict(db.execute("SELECT k, v FROM kv"))
        finally:
            db.close()
        out = {"seconds": time.perf_counter() - t0, "keys": len(state)}
    else:
        raise ValueError(f"unknown kind {kind!r}")
    out["peak_rss_bytes"] = peak_rss_bytes()
    return out


def run_child(kind: str, path: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "rehydrate.bench.child", kind, path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise BaselineError(f"{kind} failed: {r.stderr.strip().splitlines()[-1:] or r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- Redis ------------------------------------------------------------------------
def redis_available() -> bool:
    return shutil.which("redis-server") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of our own: 127.0.0.1, a free port, ``directory``;
    ``stop()`` (by PID) is safe to call twice and is always called."""

    def __init__(self, directory: str, aof: bool) -> None:
        self.port = _free_port()
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", directory, "--daemonize", "no", "--protected-mode", "yes",
                "--save", "", "--dbfilename", "dump.rdb",
                "--appendonly", "yes" if aof else "no", "--auto-aof-rewrite-percentage", "0"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_ready(self, deadline_s: float = 600.0) -> None:
        """Until PING answers PONG (not -LOADING); BaselineError if the
        server exits or never answers."""
        end = time.perf_counter() + deadline_s
        while time.perf_counter() < end:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(
                    errors="replace").strip()
                raise BaselineError(f"redis-server exited with {self.proc.returncode}"
                                    + (f": {err.splitlines()[-1]}" if err else ""))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.001)  # not listening yet: poll again (a readiness probe)
        raise BaselineError(f"redis-server did not answer within {deadline_s} s")

    def command(self, *parts: bytes) -> bytes:
        from .workload import resp_command

        with socket.create_connection(("127.0.0.1", self.port), timeout=600) as s:
            s.sendall(resp_command(*parts))
            return s.recv(4096)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # by PID, never by name
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def time_redis(directory: str, aof: bool) -> float:
    server = RedisServer(directory, aof)
    t0 = time.perf_counter()
    try:
        server.wait_ready()
        return time.perf_counter() - t0
    finally:
        server.stop()


def make_rdb(aof_dir: str, rdb_dir: str) -> None:
    """Load the AOF into a Redis of our own and SAVE its RDB into ``rdb_dir``."""
    server = RedisServer(aof_dir, aof=True)
    try:
        server.wait_ready()
        reply = server.command(b"SAVE")
        if not reply.startswith(b"+OK"):
            raise BaselineError(f"redis SAVE answered {reply[:80]!r}")
    finally:
        server.stop()
    os.makedirs(rdb_dir, exist_ok=True)
    os.replace(os.path.join(aof_dir, "dump.rdb"), os.path.join(rdb_dir, "dump.rdb"))
