"""Archiving to object storage (docs/archive.md): restore, write overhead, lag, requests.

    .venv/bin/python benchmarks/archive.py [--quick] [--json OUT] [--plot PNG]
        [--repeat 5] [--keys 1800000] [--ops 10000000]
        [--sections raw,restore,writes,lag,requests] [--compare-python PY]

Starts moto's S3 server (tests/helpers/s3_server.py) on 127.0.0.1 as a
child process, objects kept in memory (``MOTO_S3_DEFAULT_KEY_BUFFER_SIZE``),
and stops it by its PID at the end. Everything runs on this machine: the S3
server competes with the store for the same CPUs.

Sections (each in fresh child processes, baselines measured in the same run,
alternating):

- ``raw``: what the endpoint itself does with a 64 MiB object: one PUT
  stream (a multipart upload), one GET of the whole object, 8 range GETs of
  8 MiB in parallel through one open object (one HEAD), and the same with an
  open (a HEAD) per range.
- ``restore``: a store with a ``--keys`` snapshot (``key:N``, 32-byte
  values) and a tail of ``--ops`` ops after it (benchmarks/replay.py's mix:
  80% put, 10% incr, 10% delete, over the same keys), archived to the S3
  server (``wait_for_archive``). Then ``--repeat`` times, alternating, in
  fresh processes: (a) ``rehydrate.restore(uri, dir)`` + ``Store.open(dir)``;
  (b) the baseline: the same objects downloaded one after another, one GET
  each (a ``pyarrow.fs`` input stream read whole), written into a directory
  laid out as the store (the segment bytes, the snapshot files, the
  original's MANIFEST), then ``Store.open`` of it. Target: (a) <= 1.5 x (b).
  Both again from a ``file://`` archive of the same objects (the restore's
  own cost, without the S3 server). ``--compare-python`` adds (a) run by
  another build's interpreter. The requests of each are counted once more,
  untimed, at a FaultProxy.
- ``writes``: single ``put`` calls in a tight loop, ``sync="interval"``, for
  ``--write-s`` seconds, with no archive, a ``file://`` archive (on
  /dev/shm when there is one) and the S3 server, alternating. Target: the
  S3 archive costs <= 5% of the throughput.
- ``lag``: a writer at a steady ``--lag-rate`` puts/s (paced: write i is
  due at i / rate) for ``--lag-s`` seconds, ``archive_every_s=1``;
  ``archive_status["lag_seconds"]`` sampled every 50 ms. Target: p99 <=
  archive_every_s + 1 s.
- ``requests``: a writer at ``--req-rate`` puts/s for ``--req-s`` seconds
  with ``checkpoint_every_s=30`` (the default segment size), archiving
  through tests/helpers/s3_faults.FaultProxy in front of the S3 server, which
  counts the requests by kind; extrapolated to an hour.

``--quick``: a 10x smaller restore (180k keys, 1M ops), 2 repeats, shorter
runs (writes 2 s, lag 10 s, requests 20 s with a checkpoint every 10 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from _common import machine, median, peak_rss_bytes  # noqa: E402

BUCKET = "rehydrate-bench"
MIB = 1 << 20
VALUE = bytes(range(32))
#: Random 32-byte values, written in turn (2 MiB of them: no repeat within
#: LZ4's 64 KiB window, so the log is as big as the data).
N_VALUES = 65536


def random_values(seed: int) -> list[bytes]:
    import random

    block = random.Random(seed).randbytes(32 * N_VALUES)
    return [block[32 * i:32 * i + 32] for i in range(N_VALUES)]


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def cpu_s_of(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_of(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of process ``pid``, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def child(args: list[str], env: Optional[dict[str, str]] = None,
          python: Optional[str] = None) -> dict[str, Any]:
    """Run this file with ``args`` in a fresh process; it prints one JSON object last."""
    out = subprocess.run([python or sys.executable, os.path.abspath(__file__), *args],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ raw
def c_raw(uri: str, repeat: int) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from rehydrate.objstore import open_object_store

    st = open_object_store(uri)
    fs = st.fs
    data = os.urandom(64 * MIB)
    key = st.key("raw/big")
    res: dict[str, list[float]] = {"put": [], "get_whole": [], "get_ranges_one_open": [],
                                   "get_ranges_open_each": []}
    for _ in range(repeat):
        t = time.perf_counter()
        with fs.open_output_stream(key) as out:
            out.write(data)
        res["put"].append(time.perf_counter() - t)
        t = time.perf_counter()
        with fs.open_input_stream(key) as s:
            got = s.read(len(data))
        res["get_whole"].append(time.perf_counter() - t)
        assert len(got) == len(data)
        del got
        t = time.perf_counter()
        with fs.open_input_file(key) as f, ThreadPoolExecutor(8) as pool:
            n = sum(pool.map(lambda i: len(f.read_at(8 * MIB, i * 8 * MIB)), range(8)))
        res["get_ranges_one_open"].append(time.perf_counter() - t)
        assert n == len(data)

        def ranged(i: int) -> int:
            with fs.open_input_file(key) as f:
                return len(f.read_at(8 * MIB, i * 8 * MIB))
        t = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            n = sum(pool.map(ranged, range(8)))
        res["get_ranges_open_each"].append(time.perf_counter() - t)
    fs.delete_file(key)
    return {k: {"s": median(v), "mb_per_s": len(data) / median(v) / 1e6, "runs": v}
            for k, v in res.items()}


def count_put(srv: Any, size: int) -> dict[str, int]:
    """The requests one ``ObjectStore.put_bytes`` of ``size`` bytes makes
    (a multipart upload when big) and one ``delete`` of it, counted at a
    FaultProxy."""
    from helpers.s3_faults import FaultProxy

    from rehydrate.objstore import open_object_store

    with FaultProxy(srv.port) as proxy:
        st = open_object_store(srv.uri(BUCKET, "raw", endpoint=proxy.endpoint))
        st.put_bytes("counted", os.urandom(size))
        counts = dict(proxy.requests)
        proxy.reset_counts()
        st.delete("counted")
        deleted = dict(proxy.requests)
    return {"put": counts, "delete": deleted}


# -------------------------------------------------------------- restore
def op_chunks(ops: int, keys: int, seed: int = 42):
    from replay import op_stream

    yield from op_stream(ops, keys, seed)


def c_build(path: str, uri: str, keys: int, ops: int, file_uri: str = "") -> dict[str, Any]:
    """The store: ``keys`` keys, a checkpoint, ``ops`` ops after it; then
    archived (opened with ``archive=``, ``wait_for_archive``, closed), and
    the same to ``file_uri`` when given."""
    import rehydrate as rh
    from replay import write_ops

    values = random_values(1)
    t0 = time.perf_counter()
    with rh.Store.open(path, sync="none") as store:
        for start in range(0, keys, 1000):
            with store.batch() as b:
                for k in range(start, min(keys, start + 1000)):
                    b.put("kv", f"key:{k}", values[k % N_VALUES])
        snap = store.checkpoint()
        for chunk in op_chunks(ops, keys):
            write_ops(store, chunk)
        lsn = store.lsn
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with rh.Store.open(path, archive=uri) as store:
        ok = store.wait_for_archive(timeout=1800)
        status = store.archive_status
        final_keys = len(store.table("kv"))
    if not ok:
        raise SystemExit(f"the archive did not catch up: {status}")
    archive_s = time.perf_counter() - t0
    if file_uri:  # the same objects in a local directory too
        with rh.Store.open(path, archive=file_uri) as store:
            if not store.wait_for_archive(timeout=1800):
                raise SystemExit(f"the file archive did not catch up: {store.archive_status}")
    return {"lsn": lsn, "snapshot_lsn": snap["lsn"], "build_s": build_s,
            "archive_s": archive_s, "keys": final_keys,
            "bytes_up": status["bytes_up"], "requests": status["requests"]}


def restore_plan(uri: str) -> dict[str, Any]:
    """The objects a restore to the archive's end reads, from the manifest."""
    from rehydrate import archive as A
    from rehydrate.objstore import open_object_store

    st = open_object_store(uri)
    man = A.read_manifest(st)
    assert man is not None
    plan = A.plan_restore(man, st.uri, man["archived_lsn"])
    return {"lsn": man["archived_lsn"], "snapshot": plan.snapshot, "segments": plan.segments}


def c_restore(uri: str, dest: str, parallel: int) -> dict[str, Any]:
    import pyarrow.fs  # noqa: F401  (imports out of the timing, as in the baseline)

    import rehydrate as rh

    t0 = time.perf_counter()
    r = rh.restore(uri, dest, parallel=parallel)
    t1 = time.perf_counter()
    store = rh.Store.open(dest)
    t2 = time.perf_counter()
    out = {"restore_s": t1 - t0, "open_s": t2 - t1, "total_s": t2 - t0, "bytes": r["bytes"],
           "requests": r["requests"], "lsn": store.lsn, "keys": len(store.table("kv")),
           "peak_rss_bytes": peak_rss_bytes()}
    store.close()
    return out


def c_baseline(uri: str, dest: str, original: str) -> dict[str, Any]:
    import pyarrow.fs  # noqa: F401

    import rehydrate as rh
    from rehydrate import archive as A
    from rehydrate.objstore import open_object_store
    from rehydrate.snapshot import SNAPSHOTS_DIR, snapshot_name
    from rehydrate.wal import WAL_DIR, segment_name

    t0 = time.perf_counter()
    st = open_object_store(uri)
    fs = st.fs
    man = A.read_manifest(st)
    assert man is not None
    plan = A.plan_restore(man, st.uri, man["archived_lsn"])
    os.makedirs(os.path.join(dest, WAL_DIR))
    requests = 1
    nbytes = 0

    def get(name: str, size: int) -> bytes:
        nonlocal requests, nbytes
        with fs.open_input_stream(st.key(name)) as s:
            data = s.read(size)  # one GET of the whole object
        requests += 2  # (the stream's HEAD, the GET)
        nbytes += len(data)
        return data
    if plan.snapshot is not None:
        lsn = plan.snapshot["lsn"]
        sdir = os.path.join(dest, SNAPSHOTS_DIR, snapshot_name(lsn))
        os.makedirs(sdir)
        for f in plan.snapshot["files"]:
            with open(os.path.join(sdir, f["name"]), "wb") as out:
                out.write(get(A.snapshot_object(lsn, f["name"]), f["bytes"]))
    for seg in plan.segments:
        with open(os.path.join(dest, WAL_DIR, segment_name(seg["first"])), "wb") as out:
            for part in seg["parts"]:
                data = get(A.part_name(seg, part), part["object_bytes"])
                out.write(memoryview(data)[:part["bytes"]])
    for name in os.listdir(original):  # the MANIFEST (and any other small file)
        src = os.path.join(original, name)
        if os.path.isfile(src) and name != "LOCK":
            shutil.copy(src, os.path.join(dest, name))
    t1 = time.perf_counter()
    store = rh.Store.open(dest)
    t2 = time.perf_counter()
    out = {"download_s": t1 - t0, "open_s": t2 - t1, "total_s": t2 - t0, "bytes": nbytes,
           "requests": requests, "lsn": store.lsn, "keys": len(store.table("kv")),
           "peak_rss_bytes": peak_rss_bytes()}
    store.close()
    return out


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def section_restore(a: argparse.Namespace, srv: Any, work: str) -> dict[str, Any]:
    uri = srv.uri(BUCKET, "restore")
    original = os.path.join(work, "state")
    print(f"restore: building {a.keys:,} keys + {a.ops:,} ops and archiving ...", file=sys.stderr)
    file_uri = "file://" + os.path.join(work, "file-archive")
    built = child(["--c-build", original, uri, str(a.keys), str(a.ops), file_uri])
    moto_after_build = rss_of(srv.pid)
    plan = restore_plan(uri)
    snap_bytes = sum(f["bytes"] for f in plan["snapshot"]["files"]) if plan["snapshot"] else 0
    seg_bytes = sum(s["bytes"] for s in plan["segments"])
    objects = (len(plan["snapshot"]["files"]) if plan["snapshot"] else 0) + sum(
        len(s["parts"]) for s in plan["segments"])
    print(f"  built in {built['build_s']:.1f} s, archived in {built['archive_s']:.1f} s: "
          f"snapshot {snap_bytes / 1e6:.1f} MB, {len(plan['segments'])} segments "
          f"{seg_bytes / 1e6:.1f} MB, {objects} objects; moto RSS "
          f"{moto_after_build['VmRSS'] / MIB:.0f} MiB", file=sys.stderr)
    # restore_file / baseline_file: the same from a file:// archive of the
    # same objects: the restore's own cost, without the S3 server.
    runs: dict[str, list[dict[str, Any]]] = {"restore": [], "baseline": []}
    if a.compare_python:
        runs["restore_compare"] = []
    runs["restore_file"], runs["baseline_file"] = [], []
    for i in range(a.repeat):
        for kind in runs:
            dest = os.path.join(work, f"{kind}-{i}")
            src = file_uri if kind.endswith("_file") else uri
            if kind.startswith("baseline"):
                r = child(["--c-baseline", src, dest, original])
            else:
                r = child(["--c-restore", src, dest, str(a.parallel)],
                          python=a.compare_python if kind == "restore_compare" else None)
            runs[kind].append(r)
            shutil.rmtree(dest, ignore_errors=True)
        print(f"  run {i + 1}: " + ", ".join(
            f"{k} {v[-1]['total_s']:.2f} s" + (f" (restore {v[-1]['restore_s']:.2f} s)"
                                               if "restore_s" in v[-1] else
                                               f" (download {v[-1]['download_s']:.2f} s)")
            for k, v in runs.items()), file=sys.stderr)
    # Once more each, untimed, through a FaultProxy that counts the requests.
    from helpers.s3_faults import FaultProxy

    counted = {}
    for kind in ("restore", "baseline"):
        dest = os.path.join(work, f"{kind}-counted")
        with FaultProxy(srv.port) as proxy:
            puri = srv.uri(BUCKET, "restore", endpoint=proxy.endpoint)
            if kind == "baseline":
                child(["--c-baseline", puri, dest, original])
            else:
                child(["--c-restore", puri, dest, str(a.parallel)])
            counted[kind] = dict(proxy.requests)
        shutil.rmtree(dest, ignore_errors=True)
    want = (runs["baseline"][0]["lsn"], runs["baseline"][0]["keys"])
    for k, v in runs.items():
        for r in v:
            if (r["lsn"], r["keys"]) != want:
                raise SystemExit(f"{k} opened at {(r['lsn'], r['keys'])}, baseline at {want}")
    med = {k: {m: median([r[m] for r in v]) for m in v[0] if m.endswith("_s")}
           for k, v in runs.items()}
    out = {"keys": a.keys, "ops": a.ops, "repeat": a.repeat, "parallel": a.parallel,
           "build": built, "snapshot_bytes": snap_bytes, "segment_bytes": seg_bytes,
           "objects": objects, "segments": len(plan["segments"]),
           "state_dir_bytes": dir_bytes(original), "opened_lsn": want[0], "opened_keys": want[1],
           "moto_rss_after_build": moto_after_build, "median": med, "runs": runs,
           "restore_bytes": runs["restore"][0]["bytes"],
           "restore_requests": counted["restore"],
           "baseline_bytes": runs["baseline"][0]["bytes"],
           "baseline_requests": counted["baseline"],
           "ratio": med["restore"]["total_s"] / med["baseline"]["total_s"],
           "ratio_download": med["restore"]["restore_s"] / med["baseline"]["download_s"],
           "ratio_file": med["restore_file"]["total_s"] / med["baseline_file"]["total_s"],
           "target_ratio": 1.5}
    out["target_met"] = out["ratio"] <= 1.5
    if a.compare_python:
        out["compare_python"] = a.compare_python
        out["ratio_compare"] = med["restore_compare"]["total_s"] / med["baseline"]["total_s"]
    # The bucket's objects go: moto keeps them (in memory or its temporary files).
    srv.filesystem().delete_dir_contents(f"{BUCKET}/restore")
    shutil.rmtree(os.path.join(work, "file-archive"), ignore_errors=True)
    return out


# --------------------------------------------------------------- writes
def c_writes(path: str, archive: str, seconds: float) -> dict[str, Any]:
    import random

    import rehydrate as rh

    rng = random.Random(2)
    keys = [f"k:{rng.randrange(10**9)}" for _ in range(1_000_000)]
    values = random_values(2)
    store = rh.Store.open(path, sync="interval", archive=archive or None)
    if archive:
        store.wait_for_archive(timeout=60)  # (claimed; the loop starts from a quiet archiver)
    put, done = store.put, 0
    cpu0 = os.times()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        at = done % 1_000_000
        for k, v in zip(keys[at:at + 1000], values[at % N_VALUES:at % N_VALUES + 1000]):
            put("t", k, v)
        done += 1000
    s = time.perf_counter() - t0
    cpu1 = os.times()
    status = store.archive_status
    wal = sum(os.path.getsize(os.path.join(path, "wal", n))
              for n in os.listdir(os.path.join(path, "wal")))
    store.close()
    return {"ops": done, "s": s, "ops_per_s": done / s, "wal_bytes": wal,
            "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            "archive": None if status is None else {
                k: status[k] for k in ("state", "lag_records", "lag_seconds", "bytes_up",
                                       "requests")}}


def section_writes(a: argparse.Namespace, srv: Any, work: str) -> dict[str, Any]:
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else work
    file_root = tempfile.mkdtemp(prefix="rh-archive-bench-", dir=shm)
    kinds = ("none", "file", "s3")
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    try:
        for i in range(a.repeat):
            for k in kinds:
                path = os.path.join(work, f"writes-{k}-{i}")
                target = {"none": "", "file": f"file://{file_root}/{i}",
                          "s3": srv.uri(BUCKET, f"writes/{i}")}[k]
                moto0 = cpu_s_of(srv.pid)
                runs[k].append(child(["--c-writes", path, target, str(a.write_s)]))
                runs[k][-1]["moto_cpu_s"] = cpu_s_of(srv.pid) - moto0
                shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(os.path.join(file_root, str(i)), ignore_errors=True)
            srv.filesystem().delete_dir_contents(f"{BUCKET}/writes/{i}", missing_dir_ok=True)
            print(f"  run {i + 1}: " + ", ".join(f"{k} {v[-1]['ops_per_s'] / 1e6:.3f} M/s "
                                                 f"(moto {v[-1]['moto_cpu_s'] / v[-1]['s']:.2f} "
                                                 f"CPU)"
                                                 for k, v in runs.items()), file=sys.stderr)
    finally:
        shutil.rmtree(file_root, ignore_errors=True)
    rate = {k: median([r["ops_per_s"] for r in v]) for k, v in runs.items()}
    return {"seconds": a.write_s, "repeat": a.repeat, "file_root_on": shm,
            "ops_per_s": rate,
            "overhead": {k: 1 - rate[k] / rate["none"] for k in ("file", "s3")},
            "wal_mb_per_s": {k: median([r["wal_bytes"] / r["s"] / 1e6 for r in v])
                             for k, v in runs.items()},
            "cpu_share": {k: {"writer": median([r["cpu_s"] / r["s"] for r in v]),
                              "moto": median([r["moto_cpu_s"] / r["s"] for r in v])}
                          for k, v in runs.items()},
            "target_overhead": 0.05,
            "target_met": 1 - rate["s3"] / rate["none"] <= 0.05, "runs": runs}


# ------------------------------------------------------------------ lag
def paced_writes(store: Any, rate: float, seconds: float, keys: list[str],
                 values: list[bytes]) -> int:
    """Write i is due at i / rate; every due write goes at once; sleeps
    while ahead. Returns the writes done."""
    put, done, n = store.put, 0, len(keys)
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            return done
        due = min(int((now - t0) * rate), int(seconds * rate))
        if due <= done:
            time.sleep(min(0.001, end - now))
            continue
        for i in range(done, min(due, done + 2000)):
            put("t", keys[i % n], values[i % N_VALUES])
        done = min(due, done + 2000)


def c_lag(path: str, uri: str, rate: float, seconds: float, every_s: float) -> dict[str, Any]:
    import random

    import rehydrate as rh

    rng = random.Random(3)
    keys = [f"k:{rng.randrange(10**9)}" for _ in range(1_000_000)]
    store = rh.Store.open(path, sync="interval", archive=uri, archive_every_s=every_s)
    store.wait_for_archive(timeout=60)
    samples: list[tuple[float, float, int]] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def sample() -> None:
        nxt = time.perf_counter()
        while not stop.is_set():
            st = store.archive_status
            samples.append((time.perf_counter() - t0, st["lag_seconds"], st["lag_records"]))
            nxt += 0.05
            stop.wait(max(0.0, nxt - time.perf_counter()))
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    done = paced_writes(store, rate, seconds, keys, random_values(3))
    written_s = time.perf_counter() - t0
    stop.set()
    th.join()
    status = store.archive_status
    t = time.perf_counter()
    store.wait_for_archive(timeout=120)
    catch_up_s = time.perf_counter() - t
    store.close()
    lags = [s[1] for s in samples]
    return {"writes": done, "seconds": written_s, "writes_per_s": done / written_s,
            "samples": samples, "p50": percentile(lags, 50), "p99": percentile(lags, 99),
            "max": max(lags), "catch_up_s": catch_up_s,
            "requests": status["requests"], "bytes_up": status["bytes_up"],
            "passes": status["passes"], "pass_failures": status["pass_failures"]}


def section_lag(a: argparse.Namespace, srv: Any, work: str) -> dict[str, Any]:
    path = os.path.join(work, "lag")
    r = child(["--c-lag", path, srv.uri(BUCKET, "lag"), str(a.lag_rate), str(a.lag_s),
               str(a.every_s)])
    shutil.rmtree(path, ignore_errors=True)
    srv.filesystem().delete_dir_contents(f"{BUCKET}/lag", missing_dir_ok=True)
    r.update({"rate": a.lag_rate, "every_s": a.every_s, "target_p99_s": a.every_s + 1.0})
    r["target_met"] = r["p99"] <= a.every_s + 1.0
    return r


# ------------------------------------------------------------- requests
def c_requests(path: str, uri: str, rate: float, seconds: float,
               checkpoint_every_s: float) -> None:
    """Prints "ready" once the archive is claimed, "done" after the
    window (``seconds`` of writes, then the window's last checkpoint
    archived), then its JSON line; the parent counts at the proxy."""
    import random

    import rehydrate as rh

    rng = random.Random(4)
    keys = [f"k:{rng.randrange(10**9)}" for _ in range(1_000_000)]
    store = rh.Store.open(path, sync="interval", archive=uri,
                          checkpoint_every_s=checkpoint_every_s)
    store.wait_for_archive(timeout=60)
    t0 = time.perf_counter()
    print("ready", flush=True)
    done = paced_writes(store, rate, seconds, keys, random_values(4))
    # The window holds every checkpoint due in it: wait for one due at its
    # end, and for the archive to hold its snapshot.
    due = int(seconds // checkpoint_every_s)
    deadline = time.monotonic() + checkpoint_every_s
    while store.checkpoint_stats["count"] < due and time.monotonic() < deadline:
        time.sleep(0.01)
    snap_lsn = store.checkpoint_stats["last_lsn"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        man = store._archiver.manifest if store._archiver is not None else None
        if man is not None and any(s["lsn"] == snap_lsn for s in man["snapshots"]):
            break
        time.sleep(0.01)
    window = time.perf_counter() - t0
    print("done", flush=True)
    status = store.archive_status
    wal = sum(os.path.getsize(os.path.join(path, "wal", n))
              for n in os.listdir(os.path.join(path, "wal")))
    man = store._archiver.manifest
    store.close()
    print(json.dumps({"writes": done, "window_s": window,
                      "checkpoints": store.checkpoint_stats["count"],
                      "bytes_up": status["bytes_up"], "store_requests": status["requests"],
                      "wal_bytes_local": wal, "archived_lsn": status["archived_lsn"],
                      "segments": [{"first": s["first"], "bytes": s["bytes"],
                                    "parts": len(s["parts"]), "sealed": s["sealed"]}
                                   for s in man["segments"]],
                      "snapshots": [{"lsn": s["lsn"], "bytes": sum(f["bytes"] for f in s["files"]),
                                     "files": len(s["files"])} for s in man["snapshots"]]}))


def section_requests(a: argparse.Namespace, srv: Any, work: str,
                     raw_put: Optional[dict[str, int]]) -> dict[str, Any]:
    from helpers.s3_faults import FaultProxy

    from rehydrate.options import DEFAULT_SEGMENT_BYTES

    path = os.path.join(work, "requests")
    with FaultProxy(srv.port) as proxy:
        uri = srv.uri(BUCKET, "requests", endpoint=proxy.endpoint)
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--c-requests",
                                 path, uri, str(a.req_rate), str(a.req_s),
                                 str(a.req_checkpoint_s)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        lines = []
        at: dict[str, dict[str, int]] = {}
        for line in proc.stdout:
            line = line.strip()
            lines.append(line)
            if line in ("ready", "done"):
                with proxy._lock:
                    at[line] = dict(proxy.requests)
        err = proc.stderr.read() if proc.stderr else ""
        if proc.wait() != 0:
            raise SystemExit(f"requests child failed:\n{err[-4000:]}")
        total = dict(proxy.requests)
    r = json.loads(lines[-1])
    shutil.rmtree(path, ignore_errors=True)
    srv.filesystem().delete_dir_contents(f"{BUCKET}/requests", missing_dir_ok=True)
    kinds = ("PUT", "GET", "HEAD", "LIST", "DELETE", "POST")
    window = {k: at["done"].get(k, 0) - at["ready"].get(k, 0) for k in kinds}
    per_hour = {k: v * 3600 / r["window_s"] for k, v in window.items()}
    startup = {k: at["ready"].get(k, 0) for k in kinds}
    log_rate = r["wal_bytes_local"] / r["window_s"]  # bytes of log per s (about)
    # Seals: a 64 MiB segment at this rate fills in this long (none in the window).
    fill_s = DEFAULT_SEGMENT_BYTES / log_rate if log_rate else float("inf")
    # A segment seals every fill_s at this rate (none in the window): what
    # each seal costs, from what was counted (a whole-segment upload and a
    # delete as the raw section counted them, a manifest PUT, a delete per
    # part it replaces).
    seal = None
    if raw_put and r["segments"]:
        parts_per_s = r["segments"][-1]["parts"] / r["window_s"]
        parts = min(256, round(parts_per_s * fill_s))
        per_seal = {k: raw_put["put"].get(k, 0) + parts * raw_put["delete"].get(k, 0)
                    for k in kinds}
        per_seal["PUT"] += 1
        seals_per_hour = 3600 / fill_s
        seal = {"parts_per_segment": parts, "per_seal": per_seal,
                "seals_per_hour": seals_per_hour,
                "per_hour": {k: per_hour[k] + per_seal[k] * seals_per_hour for k in kinds}}
    r.update({"seal": seal})
    r.update({"rate": a.req_rate, "seconds": a.req_s, "checkpoint_every_s": a.req_checkpoint_s,
              "startup": startup, "window": window, "per_hour": per_hour,
              "total_with_close": total, "log_bytes_per_s": log_rate,
              "segment_fill_s": fill_s, "list_zero": window["LIST"] == 0
              and total.get("LIST", 0) == 0})
    return r


# ------------------------------------------------------------------ plot
def plot(res: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4),
                             gridspec_kw={"width_ratios": [1.5, 2, 1.1]})
    ax = axes[0]
    if "restore" in res:
        med = res["restore"]["median"]
        names = [("restore", "restore", "restore\nS3"),
                 ("baseline", "download", "sequential\nGETs S3")]
        if "restore_compare" in med:
            names.insert(1, ("restore_compare", "restore", "restore\n(before)"))
        if "restore_file" in med:
            names += [("restore_file", "restore", "restore\nfile://"),
                      ("baseline_file", "download", "copy\nfile://")]
        xs = range(len(names))
        first = [med[k][f"{p}_s"] for k, p, _ in names]
        second = [med[k]["open_s"] for k, _, _ in names]
        ax.bar(xs, first, color="#4c72b0", label="restore / download")
        ax.bar(xs, second, bottom=first, color="#dd8452", label="Store.open")
        for x, f, s in zip(xs, first, second):
            ax.text(x, f + s, f"{f + s:.2f} s", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(xs), [n for _, _, n in names], fontsize=8)
        ax.set_ylabel("seconds to an open store (median)")
        r = res["restore"]
        ax.set_title(f"Restore: {r['keys'] / 1e6:g}M-key snapshot + {r['ops'] / 1e6:g}M ops\n"
                     f"S3 ratio {r['ratio']:.2f} (target <= 1.5), file:// "
                     f"{r.get('ratio_file', float('nan')):.2f}", fontsize=10)
        ax.legend(fontsize=8)
    ax = axes[1]
    if "lag" in res:
        lag = res["lag"]
        t = [s[0] for s in lag["samples"]]
        ax.plot(t, [s[1] for s in lag["samples"]], lw=1, color="#4c72b0")
        ax.axhline(lag["target_p99_s"], color="#c44e52", ls="--", lw=1,
                   label=f"target p99 {lag['target_p99_s']:g} s")
        ax.set_xlabel("seconds")
        ax.set_ylabel("archive_status lag_seconds")
        ax.set_title(f"Archive lag at {lag['rate'] / 1e3:g}k writes/s, archive_every_s="
                     f"{lag['every_s']:g}: p50 {lag['p50']:.2f} s, p99 {lag['p99']:.2f} s, "
                     f"max {lag['max']:.2f} s", fontsize=10)
        ax.legend(fontsize=8)
    ax = axes[2]
    if "writes" in res:
        w = res["writes"]
        ks = ["none", "file", "s3"]
        vals = [w["ops_per_s"][k] / 1e6 for k in ks]
        ax.bar(range(3), vals, color=["#8c8c8c", "#55a868", "#4c72b0"])
        for x, v, k in zip(range(3), vals, ks):
            label = f"{v:.2f}" if k == "none" else f"{v:.2f}\n({-w['overhead'][k] * 100:+.1f}%)"
            ax.text(x, v, label, ha="center", va="bottom", fontsize=9)
        ax.set_xticks(range(3), ["no archive", "file://", "S3 (moto)"], fontsize=9)
        ax.set_ylabel("M puts/s (median)")
        ax.set_ylim(0, max(vals) * 1.25)
        ax.set_title('Single puts, sync="interval"', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------ main
def report(res: dict[str, Any]) -> None:
    if "raw" in res:
        print("moto, one 64 MiB object (medians):")
        for k, v in res["raw"].items():
            print(f"  {k:<22} {v['s']:.3f} s  {v['mb_per_s']:7.1f} MB/s")
    if "restore" in res:
        r = res["restore"]
        m = r["median"]
        print(f"restore: {r['keys']:,}-key snapshot ({r['snapshot_bytes'] / 1e6:.1f} MB) + "
              f"{r['ops']:,} ops ({r['segments']} segments, {r['segment_bytes'] / 1e6:.1f} MB), "
              f"{r['objects']} objects, median of {r['repeat']}")
        print(f"  restore + open        {m['restore']['total_s']:.3f} s  (restore "
              f"{m['restore']['restore_s']:.3f} s, open {m['restore']['open_s']:.3f} s; "
              f"{r['restore_bytes'] / 1e6:.1f} MB, requests {r['restore_requests']})")
        if "restore_compare" in m:
            c = m["restore_compare"]
            print(f"  compare build         {c['total_s']:.3f} s  (restore {c['restore_s']:.3f} s,"
                  f" open {c['open_s']:.3f} s; ratio {r['ratio_compare']:.3f})")
        print(f"  sequential GET + open {m['baseline']['total_s']:.3f} s  (download "
              f"{m['baseline']['download_s']:.3f} s, open {m['baseline']['open_s']:.3f} s; "
              f"{r['baseline_bytes'] / 1e6:.1f} MB, {r['baseline_requests']} requests)")
        for k, label in (("restore_file", "file:// restore + open"),
                         ("baseline_file", "file:// copy + open")):
            f = m[k]
            first = f.get("restore_s", f.get("download_s"))
            print(f"  {label:<21} {f['total_s']:.3f} s  ({'restore' if 'restore_s' in f else 'copy'}"
                  f" {first:.3f} s, open {f['open_s']:.3f} s)")
        print(f"  file:// ratio         {r['ratio_file']:.3f}")
        print(f"  ratio                 {r['ratio']:.3f}  (target <= 1.5: "
              f"{'met' if r['target_met'] else 'missed'}); download alone "
              f"{r['ratio_download']:.3f}")
        print(f"  moto RSS after the archive: {r['moto_rss_after_build']['VmRSS'] / MIB:.0f} MiB")
    if "writes" in res:
        w = res["writes"]
        print(f"writes: single puts, sync=interval, {w['seconds']:g} s each, median of "
              f"{w['repeat']}")
        for k in ("none", "file", "s3"):
            extra = "" if k == "none" else f"  overhead {w['overhead'][k] * 100:+.1f}%"
            print(f"  {k:<5} {w['ops_per_s'][k] / 1e6:.3f} M/s  ({w['wal_mb_per_s'][k]:.1f} MB/s "
                  f"of log; CPUs busy: writer {w['cpu_share'][k]['writer']:.2f}, moto "
                  f"{w['cpu_share'][k]['moto']:.2f}){extra}")
        print(f"  target <= 5% for s3: {'met' if w['target_met'] else 'missed'}")
    if "lag" in res:
        lg = res["lag"]
        print(f"lag: {lg['writes_per_s']:,.0f} writes/s for {lg['seconds']:.1f} s, "
              f"archive_every_s={lg['every_s']:g}: p50 {lg['p50']:.3f} s, p99 {lg['p99']:.3f} s,"
              f" max {lg['max']:.3f} s (target p99 <= {lg['target_p99_s']:g} s: "
              f"{'met' if lg['target_met'] else 'missed'})")
    if "requests" in res:
        q = res["requests"]
        print(f"requests: {q['writes'] / q['window_s']:,.0f} writes/s, window "
              f"{q['window_s']:.1f} s, {q['checkpoints']} checkpoints; log "
              f"{q['log_bytes_per_s'] / 1e6:.2f} MB/s (a segment fills in "
              f"{q['segment_fill_s']:.0f} s)")
        seal = q["seal"]
        for k in ("PUT", "GET", "HEAD", "LIST", "DELETE", "POST"):
            extra = "" if seal is None else (f"  with seals {seal['per_hour'][k]:>9,.0f}  "
                                             f"(per seal {seal['per_seal'][k]})")
            print(f"  {k:<6} window {q['window'][k]:>5}  per hour {q['per_hour'][k]:>9,.0f}  "
                  f"(start-up {q['startup'][k]}){extra}")
        if seal is not None:
            print(f"  seals: {seal['seals_per_hour']:.1f} per hour, "
                  f"{seal['parts_per_segment']} parts each")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", metavar="OUT")
    p.add_argument("--plot", metavar="PNG")
    p.add_argument("--sections", default="raw,restore,writes,lag,requests")
    p.add_argument("--repeat", type=int)
    p.add_argument("--keys", type=int)
    p.add_argument("--ops", type=int)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--compare-python", metavar="PY",
                   help="also time restore with this interpreter (another build)")
    p.add_argument("--write-s", type=float)
    p.add_argument("--lag-rate", type=float, default=100_000)
    p.add_argument("--lag-s", type=float)
    p.add_argument("--every-s", type=float, default=1.0)
    p.add_argument("--req-rate", type=float, default=10_000)
    p.add_argument("--req-s", type=float)
    p.add_argument("--req-checkpoint-s", type=float)
    p.add_argument("--dir", help="work directory (default: a temporary one)")
    for c in ("raw", "build", "restore", "baseline", "writes", "lag", "requests"):
        p.add_argument(f"--c-{c}", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.c_raw:
        print(json.dumps(c_raw(a.c_raw[0], int(a.c_raw[1]))))
        return 0
    if a.c_build:
        d, u, k, o, f = a.c_build
        print(json.dumps(c_build(d, u, int(k), int(o), f)))
        return 0
    if a.c_restore:
        print(json.dumps(c_restore(a.c_restore[0], a.c_restore[1], int(a.c_restore[2]))))
        return 0
    if a.c_baseline:
        print(json.dumps(c_baseline(*a.c_baseline)))
        return 0
    if a.c_writes:
        d, u, s = a.c_writes
        print(json.dumps(c_writes(d, u, float(s))))
        return 0
    if a.c_lag:
        d, u, r, s, e = a.c_lag
        print(json.dumps(c_lag(d, u, float(r), float(s), float(e))))
        return 0
    if a.c_requests:
        d, u, r, s, c = a.c_requests
        c_requests(d, u, float(r), float(s), float(c))
        return 0

    q = a.quick
    a.repeat = a.repeat or (2 if q else 5)
    a.keys = a.keys or (180_000 if q else 1_800_000)
    a.ops = a.ops if a.ops is not None else (1_000_000 if q else 10_000_000)
    a.write_s = a.write_s or (2.0 if q else 5.0)
    a.lag_s = a.lag_s or (10.0 if q else 30.0)
    a.req_s = a.req_s or (20.0 if q else 60.0)
    a.req_checkpoint_s = a.req_checkpoint_s or (10.0 if q else 30.0)
    sections = [s for s in a.sections.split(",") if s]

    from helpers.s3_server import s3_env, start_s3_server

    os.environ.update(s3_env())
    # moto keeps each object in memory up to this size and spills bigger ones
    # to temporary files (default: 5 MiB): in memory, its storage does not
    # compete for this machine's disk with the store it archives.
    os.environ.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(1 << 30))
    for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(var, None)
    work = a.dir or tempfile.mkdtemp(prefix="rh-archive-bench-")
    os.makedirs(work, exist_ok=True)
    srv = start_s3_server(os.path.join(work, "moto"))
    res: dict[str, Any] = {"benchmark": "archive", "quick": q, "machine": machine(),
                           "moto_pid": srv.pid}
    try:
        srv.make_bucket(BUCKET)
        t_all = time.perf_counter()
        if "raw" in sections:
            print("raw: moto with a 64 MiB object ...", file=sys.stderr)
            res["raw"] = child(["--c-raw", srv.uri(BUCKET, "raw"), str(3)])
            res["raw_put_requests"] = count_put(srv, 64 * MIB)
        if "restore" in sections:
            res["restore"] = section_restore(a, srv, work)
        if "writes" in sections:
            print("writes ...", file=sys.stderr)
            res["writes"] = section_writes(a, srv, work)
        if "lag" in sections:
            print("lag ...", file=sys.stderr)
            res["lag"] = section_lag(a, srv, work)
        if "requests" in sections:
            print("requests ...", file=sys.stderr)
            res["requests"] = section_requests(a, srv, work, res.get("raw_put_requests"))
        res["moto_rss_end"] = rss_of(srv.pid)
        res["duration_s"] = time.perf_counter() - t_all
    finally:
        srv.stop()
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)
    report(res)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    if a.plot:
        plot(res, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
