"""Fuzz the Arrow IPC file reader: arbitrary bytes as a snapshot table file.

    python fuzz/fuzz_arrow_ipc.py fuzz/corpus/arrow_ipc -runs=100000 -max_len=8192

Checks, for any input: no crash, no hang, no exception other than
CorruptionError (carrying the path), and a result that parses keeps the
reader's promises: one column per field, each as long as its batch, offsets
within the values buffer and non-decreasing, primitive buffers of exactly
``length`` items. ``python fuzz/fuzz_arrow_ipc.py --seeds DIR`` (needs pyarrow)
rewrites the seed files committed in ``fuzz/corpus/arrow_ipc``.
"""

from rehydrate._arrow_ipc import read_file
from rehydrate.errors import CorruptionError

from _fuzzing import run  # (the harnesses run as scripts, from fuzz/)

PATH = "fuzz.arrow"


def _check(f) -> None:
    for batch in f.batches:
        if len(batch.columns) != len(f.fields):
            raise AssertionError("column count differs from the schema")
        for col, (name, typ) in zip(batch.columns, f.fields):
            if col.length != batch.num_rows or not 0 <= col.null_count <= col.length:
                raise AssertionError(f"{name}: bad length or null count")
            if col.validity is not None and len(col.validity) != (col.length + 7) // 8:
                raise AssertionError(f"{name}: validity size")
            if col.offsets is not None:
                o = col.offsets
                if len(o) != col.length + 1 or o[0] < 0 or o[-1] > len(col.data):
                    raise AssertionError(f"{name}: offsets out of bounds")
                if any(a > b for a, b in zip(o[:-1], o[1:])):
                    raise AssertionError(f"{name}: offsets decrease")
                for i in range(col.length):
                    col.data[o[i]:o[i + 1]].tobytes()
            elif typ == "bool":
                if len(col.data) != (col.length + 7) // 8:
                    raise AssertionError(f"{name}: bool data size")
            elif len(col.data) != col.length:
                raise AssertionError(f"{name}: {typ} data holds {len(col.data)} items")


def test_one_input(data: bytes) -> None:
    try:
        f = read_file(data, PATH)
    except CorruptionError as e:
        if e.path != PATH or e.reason != "bad_snapshot":
            raise AssertionError(f"error without its path or reason: {e!r}")
        return
    _check(f)


def write_seeds(out: str) -> None:
    import os

    import pyarrow as pa

    def arrow(table, chunk=None):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=chunk)
        return sink.getvalue().to_pybytes()

    os.makedirs(out, exist_ok=True)
    seeds = {
        "kv.arrow": arrow(pa.table({"key": pa.array([b"a", b"bb", b"ccc"]),
                                    "value": pa.array([b"x" * 5, None, b""])}), 2),
        "numbers.arrow": arrow(pa.table({
            "i64": pa.array([1, None, -3], pa.int64()), "f64": [0.5, 1.5, None],
            "u64": pa.array([2 ** 64 - 1, 0, 7], pa.uint64()),
            "i32": pa.array([1, 2, 3], pa.int32()), "f32": pa.array([1, 2, 3], pa.float32()),
            "big": pa.array([b"L", None, b"LLL"], pa.large_binary())})),
        "empty.arrow": arrow(pa.schema([("key", pa.binary())]).empty_table()),
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


def main() -> None:
    run(test_one_input, write_seeds, "fuzz/corpus/arrow_ipc")


if __name__ == "__main__":
    main()
