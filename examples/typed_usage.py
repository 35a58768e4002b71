"""A typed program using rehydrate's public API; `make typecheck` checks it
with mypy --strict, and tests/test_typed_usage.py runs it.

    python examples/typed_usage.py STATE_DIR

Opens a store with a few table kinds, writes, reopens and prints what came
back, one "name: value" line each, then "ok".
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, cast

import rehydrate
from rehydrate import (
    ConfigError,
    CorruptionError,
    DictTable,
    Migrations,
    NumericTable,
    RehydrateError,
    StateType,
    Store,
    UnsupportedKeyError,
    Warmup,
)
from rehydrate._types import Key, Number, Offsets, TableKind, Value


class TopScores(StateType):
    """The highest score per player, fed the "top" table's records."""

    def __init__(self) -> None:
        self.best: dict[Key, Number] = {}

    def apply(self, op: str, key: Key | None, value: Value) -> None:
        if op == "put":
            if not isinstance(value, (int, float)):
                raise TypeError(f"a score is a number, not {type(value).__name__}")
            assert key is not None
            self.best[key] = max(value, self.best.get(key, value))
        elif op == "delete":
            assert key is not None
            self.best.pop(key, None)
        elif op == "clear":
            self.best.clear()
        else:
            raise TypeError(f"TopScores does not take {op}")

    def apply_many(self, records: Iterable[tuple[str, Key | None, Value]]) -> None:
        for op, key, value in records:
            self.apply(op, key, value)

    def snapshot(self) -> Any:
        return [[k, v] for k, v in self.best.items()]

    @classmethod
    def restore(cls, data: Any) -> TopScores:
        t = cls()
        t.best = {k: v for k, v in data}
        return t

    def __len__(self) -> int:
        return len(self.best)


def on_progress(done: int, total: int) -> None:
    pass


def build_migrations() -> Migrations:
    mig = Migrations()

    @mig.upcaster("users", from_version=1)
    def add_plan(value: Value) -> Value:
        if isinstance(value, dict) and "plan" not in value:
            return {**value, "plan": "free"}
        return value

    return mig


def open_store(path: str) -> Store:
    kinds: dict[str, TableKind] = {
        "sessions": DictTable,
        "stats": NumericTable({"hits": "int64", "score": "float64"}, rows=16),
        "top": TopScores,
    }
    warmup = Warmup(budgets={"replay": 60.0}, stall_s=30.0, listeners=[])
    return Store.open(path, sync="always", progress=on_progress, tables=kinds,
                      warmup=warmup, migrations=build_migrations())


def write(store: Store) -> int:
    store.put("users", "ada", {"name": "Ada"})
    store.put("users", b"raw-key", [1, 2, 3])
    store.put("users", 7, "seven")
    store.delete("users", 7)
    store.incr("counters", "visits")
    store.incr("counters", "visits", 2)
    store.incr("counters", "load", 0.5)
    store.put("sessions", "s1", {"user": "ada"})
    store.put("stats", 3, {"hits": 1, "score": 0.25})
    store.incr("stats", 3, 4, column="hits")
    store.put("top", "ada", 10)
    store.put("top", "ada", 7)
    with store.batch(offsets={"orders/0": 1}) as b:
        b.put("orders", 1, {"total": 12})
        b.incr("counters", "orders")
    consumed = store.consume("orders/0", 2)
    if consumed is not None:
        with consumed as b:
            b.put("orders", 2, {"total": 30})
    again = store.consume("orders/0", 2)  # already in the state
    assert again is None
    try:
        store.put("users", cast(Any, 1.5), "a float is not a key")
    except UnsupportedKeyError as e:
        print(f"refused: {type(e).__name__}")
    checkpoint: dict[str, Any] = store.checkpoint()
    lsn: int = checkpoint["lsn"]
    return lsn


def report(store: Store) -> None:
    users = store.table("users")
    print(f"users.ada: {users['ada']}")
    print(f"users.raw-key: {users[b'raw-key']}")
    print(f"users.7: {7 in users}")
    counters = store.table("counters")
    print(f"counters.visits: {counters['visits']}")
    print(f"counters.orders: {counters['orders']}")
    stats: NumericTable = store.table("stats")
    print(f"stats.3: {stats[3]}")
    top: TopScores = store.table("top")
    print(f"top.ada: {top.best['ada']}")
    offsets: Offsets = store.offsets
    print(f"offsets: {offsets}")
    ready: dict[str, Any] = store.readiness()
    print(f"ready: {ready['ready']}")
    registry = store.metrics()
    print(f"metrics: {registry is not None}")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: typed_usage.py STATE_DIR", file=sys.stderr)
        return 2
    path = argv[1]
    store = open_store(path)
    try:
        print(f"checkpoint lsn: {write(store) > 0}")
    finally:
        store.close()
    with open_store(path) as store:
        report(store)
    try:
        Store.open(path, sync="sometimes")
    except ConfigError as e:
        print(f"config error: {e.reason}")
    try:
        rehydrate.verify(path)
    except CorruptionError as e:
        print(f"corrupt: {e}")
        return 1
    except RehydrateError as e:
        print(f"error: {e}")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
