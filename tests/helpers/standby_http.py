"""Tables, writes and state of the HTTP standby tests (tests/test_standby_http.py),
and the processes they kill -9.

    python standby_http.py primary DIR TOKEN N
        opens DIR as a primary serving replication on 127.0.0.1 (any port),
        prints "port P", writes N rounds of every table kind (each made
        durable), prints "wrote LSN", then waits for stdin to close.
    python standby_http.py standby DIR URL TOKEN
        opens DIR as a standby of URL, prints "ready LSN", then "lsn N"
        each time it applied more, until killed.
"""

from __future__ import annotations

import sys

from rehydrate import DictTable, NumericTable, StateType, Store

TOKEN = "standby-http-token"
ROWS = 16


class Tally(StateType):
    """A custom table: how many puts each key had (a record applied twice
    shows)."""

    def __init__(self) -> None:
        self.n: dict = {}

    def apply(self, op, key, value):
        if op == "put":
            self.n[key] = self.n.get(key, 0) + 1
        elif op == "delete":
            self.n.pop(key, None)
        elif op == "clear":
            self.n.clear()

    def snapshot(self):
        return dict(self.n)

    @classmethod
    def restore(cls, data):
        t = cls()
        t.n = dict(data)
        return t


KINDS = {"d": DictTable, "n": NumericTable(columns={"x": "int64", "y": "float64"}, rows=ROWS),
         "c": Tally}


def write_round(store, i: int) -> int:
    """One write to each table kind (an incr and a Tally put: applying a
    record twice changes the state); returns the last LSN."""
    store.put("kv", f"k{i}", {"i": i, "pad": "v" * 24})
    store.put("d", f"d{i % 7}", [i, str(i)])
    store.incr("n", i % ROWS, 1, column="x")
    return store.put("c", f"t{i % 5}", i)


def state(store) -> dict:
    """Every table's contents, comparable across stores."""
    out = {}
    for name in ("kv", "d", "n", "c"):
        if name not in store.tables():
            out[name] = None
            continue
        t = store.table(name)
        if name == "c":
            out[name] = dict(t.n)
        elif name == "n":
            out[name] = [t[i] for i in range(ROWS)]
        else:
            out[name] = {k: t[k] for k in t.keys()}
    return out


def _primary(path: str, token: str, n: int) -> None:
    p = Store.open(path, tables=KINDS, segment_bytes=4096)
    server = p.serve_http(0, replication=True, token=token)
    print(f"port {server.port}", flush=True)
    last = 0
    for i in range(n):
        last = write_round(p, i)
    p.sync()
    print(f"wrote {last}", flush=True)
    sys.stdin.read()  # (killed before this returns)
    server.close()
    p.close()


def _standby(path: str, url: str, token: str) -> None:
    s = Store.open_standby(path, url, token=token, tables=KINDS)
    print(f"ready {s.lsn}", flush=True)
    seen = s.lsn
    while True:
        s.wait_for_lsn(seen + 1, timeout=1.0)
        if s.lsn != seen:
            seen = s.lsn
            print(f"lsn {seen}", flush=True)


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "primary":
        _primary(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        _standby(sys.argv[2], sys.argv[3], sys.argv[4])
