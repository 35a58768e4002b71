"""A synthetic workload and the state directories it builds: ours, and the
files each baseline starts from (docs/bench.md).

The ops are deterministic for a seed: ``mix`` parts put (``value_bytes``
random bytes to one of ``keys`` keys), incr (of one of ``keys`` counters)
and delete (one of the put keys). The build writes them through ``Store``
in batches of 1,000 (checkpointing at ``snapshot_at`` of the way, if
asked), and alongside:

- ``ops.msgpack``: the same ops, for ``python_msgpack_dict``;
- ``state.pickle``: the final state as a pickled dict, for ``pickle_load``;
- ``state.sqlite``: the final state in a table, for ``sqlite``;
- ``redis/appendonly.aof``: the ops as Redis commands (``redis_aof``), and
  ``redis-rdb/dump.rdb``, the state Redis saves from it (``redis_rdb``),
  when a ``redis-server`` is on PATH.
"""

from __future__ import annotations

from typing import Any, Optional

import os
import pickle
from dataclasses import asdict, dataclass

from ..errors import ConfigError

OP_PUT, OP_INCR, OP_DELETE = 0, 1, 2
MARKER = ".rehydrate-bench"  # marks a --dir as ours (so it may be emptied)
_CHUNK = 100_000
_BATCH = 1_000


@dataclass(frozen=True)
class Workload:
    records: int = 1_000_000
    keys: int = 200_000
    value_bytes: int = 32
    mix: tuple = (80, 10, 10)  # put : incr : delete
    snapshot_at: Optional[float] = None  # fraction of the way, or None: log only
    seed: int = 42

    def check(self) -> "Workload":
        """ConfigError naming the first nonsense parameter."""
        if type(self.records) is not int or self.records < 1:
            raise ConfigError(f"--records must be >= 1, not {self.records}")
        if type(self.keys) is not int or self.keys < 1:
            raise ConfigError(f"--keys must be >= 1, not {self.keys}")
        if self.keys > self.records:
            raise ConfigError(f"--keys ({self.keys:,}) cannot exceed --records "
                              f"({self.records:,}): most keys would never be written")
        if type(self.value_bytes) is not int or not 1 <= self.value_bytes <= 1 << 20:
            raise ConfigError(f"--value-bytes must be 1..1048576, not {self.value_bytes}")
        if len(self.mix) != 3 or any(type(x) is not int or x < 0 for x in self.mix) \
                or sum(self.mix) == 0 or self.mix[0] == 0:
            raise ConfigError(f"--mix is put:incr:delete, three counts >= 0 with puts > 0, "
                              f"not {':'.join(map(str, self.mix))}")
        if self.snapshot_at is not None and not 0.0 <= self.snapshot_at <= 1.0:
            raise ConfigError(f"--snapshot-at is a fraction 0..1, not {self.snapshot_at}")
        return self

    def as_dict(self) -> dict:
        d = asdict(self)
        d["mix"] = list(self.mix)
        return d


def parse_mix(text: str) -> tuple:
    try:
        parts = tuple(int(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError(f"--mix is put:incr:delete (e.g. 80:10:10), not {text!r}") from None
    if len(parts) != 3:
        raise ConfigError(f"--mix is put:incr:delete (e.g. 80:10:10), not {text!r}")
    return parts


def op_chunks(w: Workload):
    """Lists of (op, key, value), ``_CHUNK`` ops at a time (numpy: fast)."""
    import numpy as np

    rng = np.random.default_rng(w.seed)
    put, incr, _ = (x / sum(w.mix) for x in w.mix)
    vb = w.value_bytes
    for start in range(0, w.records, _CHUNK):
        n = min(_CHUNK, w.records - start)
        r = rng.random(n)
        kidx = rng.integers(0, w.keys, n).tolist()
        vals = rng.bytes(vb * n)
        kinds = np.where(r < put, OP_PUT, np.where(r < put + incr, OP_INCR, OP_DELETE)).tolist()
        out: list[tuple[int, str, Any]] = []
        for i in range(n):
            if kinds[i] == OP_PUT:
                out.append((OP_PUT, f"key:{kidx[i]}", vals[vb * i:vb * i + vb]))
            elif kinds[i] == OP_INCR:
                out.append((OP_INCR, f"cnt:{kidx[i]}", 1))
            else:
                out.append((OP_DELETE, f"key:{kidx[i]}", None))
        yield out


def resp_command(*parts: bytes) -> bytes:
    """One command in Redis's wire protocol (RESP): an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


def _as_resp(op, k, v) -> bytes:
    if op == OP_PUT:
        return resp_command(b"SET", k.encode(), v)
    if op == OP_INCR:
        return resp_command(b"INCRBY", k.encode(), b"%d" % v)
    return resp_command(b"DEL", k.encode())


def build(work: str, w: Workload, redis: bool, progress=None) -> dict:
    """Write the state directory and the baselines' files under ``work``;
    returns their paths and sizes. ``progress(n)`` after every n ops."""
    import sqlite3

    import msgpack

    from ..store import Store

    state_dir = os.path.join(work, "state")
    paths = {"state": state_dir, "ops": os.path.join(work, "ops.msgpack"),
             "pickle": os.path.join(work, "state.pickle"),
             "sqlite": os.path.join(work, "state.sqlite")}
    if redis:
        paths["redis_aof"] = os.path.join(work, "redis")
        os.makedirs(paths["redis_aof"])
    snap_at = None if w.snapshot_at is None else int(w.snapshot_at * w.records)
    state: dict = {}
    done = 0
    packer = msgpack.Packer(use_bin_type=True)
    aof = open(os.path.join(paths["redis_aof"], "appendonly.aof"), "wb") if redis else None
    try:
        with Store.open(state_dir, sync="none") as store, open(paths["ops"], "wb") as f:
            for chunk in op_chunks(w):
                for start in range(0, len(chunk), _BATCH):
                    part = chunk[start:start + _BATCH]
                    if snap_at is not None and done <= snap_at < done + len(part):
                        store.checkpoint()
                    with store.batch() as b:
                        for op, k, v in part:
                            if op == OP_PUT:
                                b.put("kv", k, v)
                                state[k] = v
                            elif op == OP_INCR:
                                b.incr("kv", k, v)
                                state[k] = state.get(k, 0) + v
                            else:
                                b.delete("kv", k)
                                state.pop(k, None)
                    done += len(part)
                    if progress is not None:
                        progress(len(part))
                f.write(b"".join(packer.pack(item) for item in chunk))
                if aof is not None:
                    aof.write(b"".join(_as_resp(*item) for item in chunk))
            if snap_at is not None and snap_at >= done:
                store.checkpoint()
    finally:
        if aof is not None:
            aof.close()
    with open(paths["pickle"], "wb") as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
    db = sqlite3.connect(paths["sqlite"])
    try:
        db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v)")
        db.executemany("INSERT INTO kv VALUES (?, ?)", state.items())
        db.commit()
    finally:
        db.close()
    return {"paths": paths, "keys": len(state), "records": done,
            "bytes": {name: _tree_bytes(p) for name, p in paths.items()}}


def _tree_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _dirs, files in os.walk(path) for f in files)
