"""Write seed inputs for fuzz_segment.py: valid frame runs of a few shapes."""

import os
import sys

from rehydrate import _pure as core
from rehydrate import _format as F


def frames(ops, offsets=None, decls=((0, F.KIND_KV, b"t"),), version=F.FORMAT_VERSION):
    t = core.KVTable()
    buf = core.LogBuffer(1)
    for op in ops:
        if op[0] == "noop":
            buf.noop()
        else:
            getattr(buf, op[0])(t, 0, *op[1:])
    first, count, records = buf.take()
    return core.encode_frame(first, count, list(decls), records, offsets, version=version)


def main(out="fuzz/corpus/segment"):
    os.makedirs(out, exist_ok=True)
    seeds = {
        "put": frames([("put", "a", b"x" * 32)]),
        "mixed": frames([("put", 1, {"a": [1, 2]}), ("incr", "n", 3), ("delete", 1),
                         ("incr", "n", 0.5), ("clear",)]),
        "lz4": frames([("put", f"key:{i}", b"v" * 40) for i in range(200)]),
    }
    seeds["two"] = seeds["put"] + frames([("put", "b", 1)])
    seeds["offsets"] = frames([("put", "a", 1), ("noop",)], {"orders/3": 1200, "q": -1})
    seeds["versioned"] = frames([("put", "a", 1), ("clear",)],
                                decls=[(0, F.KIND_KV, b"t", b"", 300)])
    seeds["format1"] = frames([("put", "a", b"x" * 32), ("incr", "n", 2)], version=1)
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main(*sys.argv[1:])
