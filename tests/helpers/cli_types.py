"""A user's table module, as `rehydrate --tables helpers.cli_types` imports it
(tests/test_cli_matrix.py): a custom StateType and the tables= of its store."""

from __future__ import annotations

import rehydrate as rh


class TopK(rh.StateType):
    """The 3 largest numbers put under each key."""

    def __init__(self) -> None:
        self.top: dict = {}

    def apply(self, op, key, value) -> None:
        if op == "put":
            if type(value) not in (int, float):
                raise ValueError("TopK takes numbers")
            self.top[key] = sorted(self.top.get(key, []) + [value], reverse=True)[:3]
        elif op == "delete":
            self.top.pop(key, None)
        elif op == "clear":
            self.top.clear()
        else:
            raise ValueError(f"TopK does not support {op}")

    def snapshot(self):
        return [[k, v] for k, v in self.top.items()]

    @classmethod
    def restore(cls, data):
        t = cls()
        t.top = {k: v for k, v in data}
        return t

    def __len__(self) -> int:
        return len(self.top)


STATS = rh.NumericTable({"hits": "int64", "score": "float64"}, rows=64)

tables = {"sessions": rh.DictTable, "stats": STATS, "top": TopK}
