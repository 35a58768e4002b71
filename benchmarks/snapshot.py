"""Cold open from a snapshot, beside pickle.load and a real Redis loading its RDB.

    python benchmarks/snapshot.py [--keys 1800000] [--repeat 3] [--json]

Builds a store of K keys ("key:N", 32-byte random values) and checkpoints it;
writes the same dict with pickle; and, when ``redis-server`` is on PATH, loads
the same keys into a Redis started on 127.0.0.1 (temporary dir, free port),
saves its RDB and stops it by PID. Then, alternating, in fresh processes:

- ``rehydrate``: ``Store.open`` (loads the snapshot; no log after it);
- ``pickle_load``: ``pickle.load`` of the dict;
- ``redis_rdb``: from starting ``redis-server`` until PING answers PONG (not
  LOADING), then the server is stopped by its PID.

Target (issue): rehydrate <= 0.1 x redis_rdb.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median, run_child, timed_open  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


def _ping_until_ready(port: int, deadline_s: float = 120.0) -> None:
    """Poll PING until PONG (Redis answers -LOADING while it reads its RDB)."""
    end = time.perf_counter() + deadline_s
    while time.perf_counter() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass  # not listening yet
    raise TimeoutError("redis did not become ready")


def _start_redis(rdir: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", rdir,
         "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no", "--daemonize", "no",
         "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)  # by PID, never by name
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def build(work: str, keys: int) -> dict:
    import rehydrate as rh

    rng = random.Random(9)
    state_dir = os.path.join(work, "state")
    data = {}
    with rh.Store.open(state_dir, sync="none") as store:
        for start in range(0, keys, 50_000):
            with store.batch() as b:
                for i in range(start, min(start + 50_000, keys)):
                    k, v = f"key:{i}", rng.randbytes(32)
                    b.put("kv", k, v)
                    data[k] = v
        cp = store.checkpoint()
    with open(os.path.join(work, "state.pickle"), "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    out = {"checkpoint": cp}
    if shutil.which("redis-server") and shutil.which("redis-cli"):
        rdir = os.path.join(work, "redis")
        os.makedirs(rdir)
        port = _free_port()
        proc = _start_redis(rdir, port)
        try:
            _ping_until_ready(port)
            resp = os.path.join(work, "load.resp")
            with open(resp, "wb") as f:
                for k, v in data.items():
                    f.write(_resp(b"SET", k.encode(), v))
            with open(resp, "rb") as f:
                subprocess.run(["redis-cli", "-p", str(port), "--pipe"], stdin=f, check=True,
                               stdout=subprocess.DEVNULL)
            subprocess.run(["redis-cli", "-p", str(port), "SAVE"], check=True,
                           stdout=subprocess.DEVNULL)
            os.unlink(resp)
        finally:
            _stop(proc)
        out["redis_dir"] = rdir
    return out


def child_pickle(path: str) -> dict:
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        d = pickle.load(f)
    return {"open_s": time.perf_counter() - t0, "keys": len(d)}


def time_redis(rdir: str) -> float:
    port = _free_port()
    t0 = time.perf_counter()
    proc = _start_redis(rdir, port)
    try:
        _ping_until_ready(port)
        return time.perf_counter() - t0
    finally:
        _stop(proc)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=1_800_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child-open", help=argparse.SUPPRESS)
    p.add_argument("--child-pickle", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_open:
        print(json.dumps(timed_open(args.child_open)))
        return 0
    if args.child_pickle:
        print(json.dumps(child_pickle(args.child_pickle)))
        return 0
    if args.keys < 1 or args.repeat < 1:
        p.error("--keys and --repeat must be positive")
    work = tempfile.mkdtemp(prefix="rehydrate-snapbench-")
    try:
        print(f"building {args.keys:,} keys in {work} ...", file=sys.stderr)
        built = build(work, args.keys)
        me = os.path.abspath(__file__)
        ours, pick, redis = [], [], []
        for i in range(args.repeat):
            ours.append(run_child([me, "--child-open", os.path.join(work, "state")]))
            pick.append(run_child([me, "--child-pickle", os.path.join(work, "state.pickle")]))
            if "redis_dir" in built:
                redis.append(time_redis(built["redis_dir"]))
            print(f"  run {i + 1}: rehydrate {ours[-1]['open_s']:.3f} s, pickle "
                  f"{pick[-1]['open_s']:.3f} s" + (f", redis {redis[-1]:.3f} s" if redis else ""),
                  file=sys.stderr)
        assert ours[0]["keys"] == args.keys and ours[0]["applied"] == 0
        m = median([r["open_s"] for r in ours])
        res = {"benchmark": "snapshot", "keys": args.keys, "repeat": args.repeat,
               "checkpoint_s": built["checkpoint"]["duration_s"],
               "checkpoint_pause_s": built["checkpoint"]["pause_s"],
               "snapshot_bytes": built["checkpoint"]["bytes"],
               "rehydrate_open_s": m, "pickle_load_s": median([r["open_s"] for r in pick]),
               "redis_rdb_s": median(redis) if redis else None,
               "peak_rss_bytes": median([r["peak_rss_bytes"] for r in ours]),
               "machine": machine()}
        res["ratio_pickle"] = m / res["pickle_load_s"]
        res["ratio_redis_rdb"] = m / res["redis_rdb_s"] if redis else None
        if args.json:
            print(json.dumps(res))
        else:
            print(f"rehydrate open from snapshot  {m:.3f} s")
            print(f"pickle.load                   {res['pickle_load_s']:.3f} s  "
                  f"(ratio {res['ratio_pickle']:.2f})")
            if redis:
                print(f"redis-server RDB load         {res['redis_rdb_s']:.3f} s  "
                      f"(ratio {res['ratio_redis_rdb']:.2f}; target <= 0.1)")
            else:
                print("redis-server not on PATH: that baseline is skipped")
            print(f"checkpoint {res['checkpoint_s']:.2f} s (writers paused "
                  f"{res['checkpoint_pause_s']:.3f} s), {res['snapshot_bytes'] / 1e6:.1f} MB")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
