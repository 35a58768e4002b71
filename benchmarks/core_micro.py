"""Micro-benchmarks of the native core (and the pure twin where it is useful).

Run from outside the source tree so the installed package is used:

    cd /work/main && .venv/bin/python benchmarks/core_micro.py            # everything
    .venv/bin/python benchmarks/core_micro.py --only replay --records 2000000

Prints medians of several runs. Measures:
- get:     table[key] on N str keys with 32-byte bytes values, next to
           dict.get(key) on the same keys in the same loop shape;
- put:     LogBuffer.put(table, tid, key, value) calls/s;
- batch:   Staging.put + LogBuffer.commit records/s;
- replay:  scan_frames over frames of 80% put / 10% incr / 10% delete
           (native on all records, pure on a 1M-record prefix), plus the
           replayed table's memory_bytes against the RSS it added.
"""

import argparse
import gc
import os
import random
import statistics
import sys
import time

import rehydrate._core as C
import rehydrate._pure as P
from rehydrate import _format as F


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def median_time(fn, runs):
    times = []
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def bench_get(n_keys, runs):
    rnd = random.Random(1)
    keys = [f"key:{i}" for i in range(n_keys)]
    values = [rnd.randbytes(32) for _ in range(n_keys)]
    t = C.KVTable()
    for k, v in zip(keys, values):
        t._put_raw(C.encode_key(k), C.pack_value(v))
    d = dict(zip(keys, values))
    del values
    order = keys[:]
    rnd.shuffle(order)  # random order: both pay their cache misses

    def native():
        for k in order:
            t[k]

    def dict_get():
        get = d.get
        for k in order:
            get(k)

    def dict_get_attr():
        for k in order:
            d.get(k)

    res = {}
    for name, fn in (("table[key]", native), ("d.get(k)", dict_get_attr),
                     ("get=d.get; get(k)", dict_get)):
        med, _ = median_time(fn, runs)
        res[name] = n_keys / med
    print(f"get ({n_keys:,} str keys, 32-byte values, shuffled, median of {runs}):")
    for name, rate in res.items():
        print(f"  {name:20s} {rate / 1e6:6.2f} M/s")
    print(f"  table[key] / d.get(k) = {res['table[key]'] / res['d.get(k)']:.2f}x")


def bench_put(n_ops, n_keys, runs):
    rnd = random.Random(2)
    keys = [f"key:{rnd.randrange(n_keys)}" for _ in range(n_ops)]
    values = [rnd.randbytes(32) for _ in range(1024)]

    def run():
        t = C.KVTable()
        lb = C.LogBuffer(1)
        put = lb.put
        target = F.FRAME_TARGET_BYTES
        i = 0
        for k in keys:
            put(t, 1, k, values[i & 1023])
            i += 1
            if lb.pending_bytes >= target:
                lb.take()

    med, _ = median_time(run, runs)
    print(f"LogBuffer.put: {n_ops / med / 1e6:.2f} M calls/s "
          f"({n_ops:,} puts over {n_keys:,} keys, 32-byte values, median of {runs})")


def bench_batch(n_ops, n_keys, batch, runs):
    rnd = random.Random(3)
    keys = [f"key:{rnd.randrange(n_keys)}" for _ in range(n_ops)]
    values = [rnd.randbytes(32) for _ in range(1024)]

    def run():
        t = C.KVTable()
        lb = C.LogBuffer(1)
        tables, tids = [t], [1]
        for start in range(0, n_ops, batch):
            s = C.Staging()
            put = s.put
            for i in range(start, min(start + batch, n_ops)):
                put("t", keys[i], values[i & 1023])
            lb.commit(s, tables, tids)
            if lb.pending_bytes >= F.FRAME_TARGET_BYTES:
                lb.take()

    med, _ = median_time(run, runs)
    print(f"Staging.put + LogBuffer.commit: {n_ops / med / 1e6:.2f} M records/s "
          f"(batches of {batch}, median of {runs})")


def build_log(n_records, n_keys, seed=4):
    """Frames for the replay benchmark, written by the native writer."""
    rnd = random.Random(seed)
    t = C.KVTable()
    lb = C.LogBuffer(1)
    n_ctr = max(1, n_keys // 10)
    frames = []
    prefix_end = {}  # records -> byte offset where the frames holding them end
    declared = False
    chunk = 100_000
    done = 0
    blob_pool = os.urandom(32 * 65536)
    while done < n_records:
        m = min(chunk, n_records - done)
        ops = rnd.choices((0, 1, 2), weights=(8, 1, 1), k=m)
        ks = [rnd.randrange(n_keys) for _ in range(m)]
        offs = [rnd.randrange(65536) * 32 for _ in range(m)]
        for op, k, off in zip(ops, ks, offs):
            if op == 0:
                lb.put(t, 1, f"key:{k}", blob_pool[off:off + 32])
            elif op == 1:
                lb.incr(t, 1, f"ctr:{k % n_ctr}", 1)
            else:
                lb.delete(t, 1, f"key:{k}")
            if lb.pending_bytes >= F.FRAME_TARGET_BYTES:
                first, count, recs = lb.take()
                frames.append(C.encode_frame(first, count, [] if declared else [(1, 1, b"t")], recs))
                declared = True
                prefix_end[first + count - 1] = sum(map(len, frames))
        done += m
    first, count, recs = lb.take()
    if count:
        frames.append(C.encode_frame(first, count, [] if declared else [(1, 1, b"t")], recs))
        prefix_end[first + count - 1] = sum(map(len, frames))
    return b"".join(frames), prefix_end, t


class Registry:
    def __init__(self, mod):
        self.mod = mod
        self.tables = {}

    def declare(self, tid, kind, name, schema=b"", version=1):
        return self.tables.setdefault(name, self.mod.KVTable())


def bench_replay(n_records, n_keys, runs, pure_records):
    t0 = time.perf_counter()
    buf, prefix_end, written = build_log(n_records, n_keys)
    lz4_frames = 0
    off = 0
    n_frames = 0
    while off < len(buf):
        h = C.parse_frame_header(buf, off)
        lz4_frames += h.codec == F.CODEC_LZ4
        n_frames += 1
        off += F.FRAME_HEADER_BYTES + h.stored_len
    print(f"replay log: {n_records:,} records over {n_keys:,} keys, {len(buf) / 1e6:.0f} MB, "
          f"{n_frames} frames ({lz4_frames} LZ4), built in {time.perf_counter() - t0:.1f} s")
    want = sorted(written._items_raw())
    del written
    gc.collect()

    times = []
    mem = None
    for i in range(runs):
        reg = Registry(C)
        ctx = C.SegmentContext(reg)
        gc.collect()
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        res = C.scan_frames(buf, 0, 1, 0, ctx)
        times.append(time.perf_counter() - t0)
        assert res.status == F.SCAN_OK and res.records == n_records, res
        table = reg.tables[b"t"]
        if i == 0:
            grown = rss_bytes() - rss0
            mem = (table.memory_bytes, grown, len(table))
            assert sorted(table._items_raw()) == want, "replayed state differs from the writer's"
        del reg, ctx, table
    med = statistics.median(times)
    print(f"native scan_frames: {n_records / med / 1e6:.2f} M records/s "
          f"({med:.3f} s median of {runs}: {', '.join(f'{x:.3f}' for x in times)})")
    print(f"  replayed table: {mem[2]:,} keys, memory_bytes {mem[0] / 2**20:.0f} MiB, "
          f"RSS growth {mem[1] / 2**20:.0f} MiB (ratio {mem[0] / max(mem[1], 1):.2f})")

    # The pure twin on a prefix of whole frames holding ~pure_records records.
    last = max(lsn for lsn in prefix_end if lsn <= pure_records) if pure_records < n_records else n_records
    sub = buf[: prefix_end[last]]
    reg = Registry(P)
    t0 = time.perf_counter()
    res = P.scan_frames(sub, 0, 1, 0, P.SegmentContext(reg))
    el = time.perf_counter() - t0
    print(f"pure scan_frames: {res.records / el / 1e6:.2f} M records/s "
          f"({res.records:,} records in {el:.2f} s)")
    reg_c = Registry(C)
    t0 = time.perf_counter()
    res_c = C.scan_frames(sub, 0, 1, 0, C.SegmentContext(reg_c))
    el_c = time.perf_counter() - t0
    print(f"native on the same prefix: {res_c.records / el_c / 1e6:.2f} M records/s")
    assert sorted(reg.tables[b"t"]._items_raw()) == sorted(reg_c.tables[b"t"]._items_raw())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["get", "put", "batch", "replay"], action="append")
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--keys", type=int, default=2_000_000)
    ap.add_argument("--get-keys", type=int, default=1_800_000)
    ap.add_argument("--ops", type=int, default=2_000_000)
    ap.add_argument("--pure-records", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    assert C.IMPLEMENTATION == "native"
    print(f"python {sys.version.split()[0]}, crc32c backend {C.crc32c_backend()}, "
          f"rehydrate._core from {os.path.dirname(C.__file__)}")
    which = args.only or ["get", "put", "batch", "replay"]
    if "get" in which:
        bench_get(args.get_keys, args.runs)
    if "put" in which:
        bench_put(args.ops, args.get_keys, args.runs)
    if "batch" in which:
        bench_batch(args.ops, args.get_keys, 1000, args.runs)
    if "replay" in which:
        bench_replay(args.records, args.keys, max(3, args.runs // 2), args.pure_records)


if __name__ == "__main__":
    main()
