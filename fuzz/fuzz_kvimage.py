"""Fuzz the KV table image loader: arbitrary bytes as a ``<id>.kvimg`` file.

    python fuzz/fuzz_kvimage.py fuzz/corpus/kvimage -runs=100000 -max_len=16384

Each input is written to a file and loaded with the native
``KVTable._load_image`` (which maps it copy-on-write and rebuilds the slots).
Checks, for any input: no crash, no hang, no exception other than
CorruptionError (reason bad_snapshot, the table then empty); the native core
and the pure twin agree on ``image_digest_sum``; and a load that succeeds
holds the header's count of entries, a sum that is not None and
``finish_digest(image_digest_sum(file), len(table)) == table._digest()``.

The header is 4096 bytes, nearly all zero padding, and its arena_len must be
the file's size less 4096. An input shorter than 4096 bytes which starts with
the magic is a *compact* image: its first 64 bytes are the header's fields,
the rest the arena, and the file is that with the header zero-filled to 4096
bytes, the arena zero-filled to a multiple of 8 bytes and arena_len set to
its length (a mutation that adds or drops bytes then still reaches the
entries). The seeds in ``fuzz/corpus/kvimage``
are compact, so mutations land on the fields and entries rather than on the
padding; any other input is written as it is (tests/test_kvimage.py covers
the padding and arena_len). ``python fuzz/fuzz_kvimage.py --seeds DIR``
rewrites the seeds.
"""

import atexit
import os
import shutil
import tempfile

from rehydrate import _core as native
from rehydrate import _pure as pure
from rehydrate._hashing import finish_digest
from rehydrate.errors import CorruptionError

from _fuzzing import run  # (the harnesses run as scripts, from fuzz/)

HEADER = 4096
MAGIC = b"RHKVIMG1"
_DIR = tempfile.mkdtemp(prefix="fuzz-kvimage-")
atexit.register(shutil.rmtree, _DIR, True)
PATH = os.path.join(_DIR, "t.kvimg")


def image_file(data: bytes) -> bytes:
    """The file an input stands for (see the module's docstring)."""
    if len(data) < HEADER and data[:8] == MAGIC and len(data) >= 64:
        arena = data[64:] + bytes(-(len(data) - 64) % 8)
        arena_len = len(arena).to_bytes(8, "little")
        return data[:24] + arena_len + data[32:64] + bytes(HEADER - 64) + arena
    return data


def compact(img: bytes) -> bytes:
    return img[:64] + img[HEADER:]


def _load(img: bytes):
    # A new file (not one truncated in place): a table that still maps the
    # old one would fault on its vanished pages.
    if os.path.exists(PATH):
        os.unlink(PATH)
    with open(PATH, "wb") as f:
        f.write(img)
    fd = os.open(PATH, os.O_RDONLY)
    try:
        t = native.KVTable()
        try:
            n = t._load_image(fd, len(img), img[:HEADER].ljust(HEADER, b"\0"))
        except CorruptionError as e:
            if e.reason != "bad_snapshot" or len(t) or t._items_raw():
                raise AssertionError(f"refused, but not cleanly: {e!r}, {len(t)} keys")
            return None
        if n != len(t):
            raise AssertionError(f"_load_image returned {n} for {len(t)} keys")
        return t
    finally:
        os.close(fd)


def test_one_input(data: bytes) -> None:
    img = image_file(data)
    a = native.image_digest_sum(img)
    b = pure.image_digest_sum(img)
    if a != b:
        raise AssertionError(f"image_digest_sum: native {a}, pure {b}")
    t = _load(img)
    if t is None:
        return
    if a is None:
        raise AssertionError("an image loaded that image_digest_sum refuses")
    count = int.from_bytes(img[16:24], "little")
    items = t._items_raw()
    if len(items) != len(t) or len(t) != count:
        raise AssertionError(f"{len(t)} keys, {len(items)} items, header count {count}")
    if finish_digest(a, len(t)) != t._digest():
        raise AssertionError("the image's digest sum is not the loaded table's digest")
    again = t._copy()._image()  # the loaded table images to the same entries
    if native.image_digest_sum(again) != a:
        raise AssertionError("the loaded table's own image has another digest sum")


def write_seeds(out: str) -> None:
    def image(pairs):
        t, buf = native.KVTable(), native.LogBuffer(1)
        for k, v in pairs:
            buf.put(t, 0, k, v)
        return t._copy(t._copy_prepare())._image()

    os.makedirs(out, exist_ok=True)
    seeds = {
        "empty": image([]),
        # str, bytes and int keys, an empty key, one of 8..16 bytes, a value
        # past 256 bytes; "c" and "d" share a home slot
        "mixed": image([("user:1", {"name": "ada", "tags": ["x"]}), (b"\x00raw", b"bytes"),
                        (7, 7), (-1, -1.5), ("", None), ("long-key-12345", "v"),
                        ("big", "B" * 300), ("c", 1), ("d", 2)]),
        "ints": image([(i, i * i) for i in range(20)]),  # 32 slots, runs of one home
    }
    for name, img in seeds.items():
        assert native.image_digest_sum(img) is not None
        with open(os.path.join(out, name), "wb") as f:
            f.write(compact(img))


def main() -> None:
    run(test_one_input, write_seeds, "fuzz/corpus/kvimage")


if __name__ == "__main__":
    main()
