"""Fuzz the MANIFEST and snapshot META readers, and what an open takes from
them: the snapshot list, log_start, versions and the migration ledger.

    python fuzz/fuzz_manifest.py fuzz/corpus/manifest -runs=100000

An input is a whole MANIFEST file (magic, length, CRC32C, JSON) whose CRC
is fixed up, so mutations reach the JSON; the same bytes with the META
magic are read as a snapshot META. Checks, for any input: no crash, no
hang, and only typed errors (CorruptionError, UnsupportedFormatError,
ConfigError for malformed versions), each naming its file.
"""

import json
import struct
from rehydrate import _core as native
from rehydrate import manifest, migrations
from rehydrate import snapshot as snap
from rehydrate.errors import ConfigError, CorruptionError, UnsupportedFormatError
from rehydrate.migration_rollback import check_ledger

from _fuzzing import run  # (the harnesses run as scripts, from fuzz/)

TYPED = (CorruptionError, UnsupportedFormatError, ConfigError)
PATH = "/nonexistent/MANIFEST"


def _fixed(data: bytes, magic: bytes) -> bytes:
    """``data`` as a file with ``magic``, a true length and a true CRC."""
    payload = data[16:] if data[:8] in (b"RHMANIF1", b"RHSNAPM1") else data
    return struct.pack("<8sII", magic, len(payload), native.crc32c(payload)) + payload


def test_one_input(data: bytes) -> None:
    for raw, read in ((data, lambda b: manifest.decode(b, PATH)),
                      (_fixed(data, b"RHMANIF1"), lambda b: manifest.decode(b, PATH))):
        try:
            man = read(raw)
            manifest.log_start(man, "/nonexistent")
            check_ledger(man, "/nonexistent")
            migrations.Versions(man, None)
            snap.migration_floor(man)
        except TYPED as e:
            if e.path is None and not isinstance(e, ConfigError):
                raise AssertionError(f"error without its file: {e!r}")
    meta = _fixed(data, b"RHSNAPM1")
    try:
        snap.decode_meta(meta, "/nonexistent/META")
    except CorruptionError as e:
        if e.path is None:
            raise AssertionError(f"error without its file: {e!r}")


def seeds() -> dict:
    good = {"format": 1, "snapshots": [12, 3], "log_start": 4, "versions": {"t": 2},
            "ledger": [{"id": "m", "table": "t", "code_hash": "sha256:00", "lsn": 12,
                        "snapshot_before": 11, "from_version": 1, "to_version": 2,
                        "digest_before": "00", "digest_after": "11", "invariants": [],
                        "confirmed": False, "checkpoints_after": 0}]}
    meta = {"format": 1, "lsn": 12, "offsets": {"s": 3}, "digest": None,
            "tables": [{"name": "t", "id": 0, "kind": 1, "file": "0.arrow", "bytes": 10,
                        "crc32c": 1, "keys": 1, "digest": "00", "version": 2}]}
    return {"manifest": manifest.encode(good), "initial": manifest.encode(manifest.initial()),
            "meta": _fixed(json.dumps(meta).encode(), b"RHSNAPM1")}


def main() -> None:
    run(test_one_input)


if __name__ == "__main__":
    main()
