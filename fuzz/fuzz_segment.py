"""Fuzz the segment reader: arbitrary bytes as a WAL segment, both cores.

    python fuzz/fuzz_segment.py fuzz/corpus/segment -runs=100000

Checks, for any input: no crash, no hang, no exception other than the typed
ones, and the native core and the pure twin agree on the scan result and the
resulting state. ``make fuzz`` runs it; ``fuzz/make_corpus.py`` writes seeds.
"""

from rehydrate import _format as F
from rehydrate import _core as native
from rehydrate import _pure as pure
from rehydrate.errors import RehydrateError

from _fuzzing import run  # (the harnesses run as scripts, from fuzz/)


class _Registry:
    def __init__(self, core):
        self.core = core
        self.names = {}

    def declare(self, tid, kind, name, schema=b"", version=1):
        if self.names.setdefault(tid, name) != name:
            raise RehydrateError("conflict", reason="bad_declaration")
        return self.core.KVTable()


def _scan(core, data, version):
    ctx = core.SegmentContext(_Registry(core))
    r = core.scan_frames(data, 0, 1, 0, ctx, True, version=version)
    state = {tid: sorted(t._items_raw()) for tid, t in ctx.tables.items()}
    return r.as_dict(), state, ctx.offsets


def test_one_input(data: bytes) -> None:
    # Every input as frames of each format the readers take (format 1 is
    # still read, in segments whose header says so).
    for version in range(F.MIN_FORMAT_VERSION, F.FORMAT_VERSION + 1):
        a = _scan(native, data, version)
        b = _scan(pure, data, version)
        if a != b:
            raise AssertionError(f"native and pure disagree (format {version}):\n{a}\n{b}")
        if a[0]["status"] not in F.SCAN_STATUS_NAMES:
            raise AssertionError("unknown status")


def main() -> None:
    run(test_one_input)


if __name__ == "__main__":
    main()
