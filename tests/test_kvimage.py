"""KV table images (src/rehydrate/_core/includes/kvimage.h, docs/FORMAT.md "Snapshot files").

What is checked:

- round trip: a table -> ``ArenaCopy._image()`` -> a file -> ``_load_image``
  gives the same content and digest, and ``finish_digest(image_digest_sum)``
  is that digest; the native and pure ``image_digest_sum`` agree;
- the image bytes depend on the content only, never on the table's history
  (keys that share a home slot are ordered by the rest of their hash, then
  by key bytes);
- a corruption table (truncations, byte flips, zeroed sectors, random small
  corruptions) against ``_model``, a plain-Python reading of the format with
  the checks kvimage.h makes: a corrupted image is refused with the error
  the model names (and the table is left empty) or loads what the model
  reads, and ``image_digest_sum`` (native = pure = model) never disagrees;
- hand-made images that break one rule each, the zero areas (header bytes
  40..4095, entry padding) included;
- a loaded table takes writes without touching its file.

Images are built natively (``_image`` and ``_load_image`` exist only in the
native core); the tests that need them run once, under the native ``core``,
and call ``rehydrate._core`` and ``rehydrate._pure`` directly.
"""

import os
import random
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import rehydrate._core as C
import rehydrate._pure as P
from rehydrate._hashing import MASK64, entry_hash, finish_digest
from rehydrate.errors import CorruptionError

ERRORS = C.kvtable._IMAGE_ERRORS
HEADER, BAD_HEADER, BAD_ENTRY, BAD_ORDER, DUPLICATE, COUNT = 4096, 1, 2, 3, 4, 5
MAX_KEY, VALUE_MAX = (1 << 20) + 1, 0x7FFFFF00

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture
def native(core):
    """Run once: under the native core (images are native only; the test
    compares the two cores itself)."""
    if core.IMPLEMENTATION != "native":
        pytest.skip("builds and maps images natively and compares both cores itself")


# -- the format, in plain Python ------------------------------------------

def _mum(a, b):
    r = a * b
    return (r & MASK64) ^ (r >> 64)


def _key_hash(kb):
    """rh_hash_parts (kvcore.h) of canonical key bytes."""
    tag, body = kb[0], kb[1:]
    n = len(body)
    h = _mum((((tag + 1) << 32) & MASK64) ^ n ^ 0x9E3779B97F4A7C15, 0xD6E8FEB86659FD93)
    i = 0
    while n - i >= 8:
        h = _mum(h ^ int.from_bytes(body[i:i + 8], "little"), 0xA0761D6478BD642F)
        i += 8
    if n - i:
        h = _mum(h ^ int.from_bytes(body[i:], "little"), 0xE7037ED1A0B428DB)
    return _mum(h, 0x8EBC6AF09C88C6E3)


def _capacity_for(n):
    cap = 8
    while n * 10 > cap * 7:
        cap <<= 1
    return cap


def _size(klen, vcap):
    return (12 + klen + vcap + 7) & ~7


def _entry(kb, vb, vcap=None):
    """An entry's bytes: {klen, vlen, vcap}, key, value, zero padding to 8
    (to the size ``vcap`` gives, when it is given)."""
    vcap = _size(len(kb), len(vb)) - 12 - len(kb) if vcap is None else vcap
    size = max(_size(len(kb), vcap), _size(len(kb), len(vb)))
    head = struct.pack("<III", len(kb), len(vb), vcap)
    return head + kb + vb + bytes(size - 12 - len(kb) - len(vb))


def _header(count, arena_len, slots=None, slot_bits=None, version=1, magic=b"RHKVIMG1"):
    slots = _capacity_for(count) if slots is None else slots
    slot_bits = (slots - 1).bit_length() if slot_bits is None else slot_bits
    head = magic + struct.pack("<IIQQQ", version, slot_bits, count, arena_len, slots)
    return head + bytes(HEADER - len(head))


def _in_home_order(pairs, slots):
    """Pairs as rh_img_build orders them: by home slot, then the rest of the
    hash, then key bytes."""
    sbits = (slots - 1).bit_length()

    def order(p):
        h = _key_hash(p[0])
        rotated = ((h << (64 - sbits)) | (h >> sbits)) & MASK64 if sbits else h
        return rotated, p[0]
    return sorted(pairs, key=order)


def _build(pairs, count=None, **header):
    """An image of (key bytes, value bytes[, vcap]) entries in the order
    given; ``count`` and ``header`` (_header's) override what the header says."""
    arena = bytes(8) + b"".join(_entry(*p) for p in pairs)
    count = len(pairs) if count is None else count
    return _header(count, len(arena), **header) + arena


def _model(data):
    """What a reader that makes kvimage.h's checks makes of ``data``:
    (error code or 0, [(key, value)] in file order when 0, the digest sum
    image_digest_sum returns: it checks the header, the entries and the
    count, not the order or duplicates)."""
    if len(data) < HEADER or data[:8] != b"RHKVIMG1":
        return BAD_HEADER, None, None
    version, sbits, count, alen, slots = struct.unpack_from("<IIQQQ", data, 8)
    if (version != 1 or alen < 8 or alen != len(data) - HEADER or alen % 8
            or count > (alen - 8) // 16 or slots != _capacity_for(count)
            or sbits != (slots - 1).bit_length() or any(data[40:HEADER])):
        return BAD_HEADER, None, None
    arena = data[HEADER:]
    if any(arena[:8]):
        return BAD_ENTRY, None, None
    off, items, total, malformed = 8, [], 0, False
    while off < alen:  # the well-formed entries up to the first that is not
        klen, vlen, vcap = struct.unpack_from("<III", arena, off) if alen - off >= 12 else (0,) * 3
        size = _size(klen, vcap)
        kb = arena[off + 12:off + 12 + klen]
        if not (1 <= klen <= MAX_KEY and 1 <= vlen <= vcap <= VALUE_MAX) or \
                size > alen - off or size != _size(klen, vlen) or vcap != size - 12 - klen \
                or not P.key_is_wellformed(kb) \
                or any(arena[off + 12 + klen + vlen:off + size]):
            malformed = True
            break
        vb = arena[off + 12 + klen:off + 12 + klen + vlen]
        items.append((kb, vb))
        total += entry_hash(kb, vb)
        off += size
    total = total & MASK64 if not malformed and len(items) == count else None
    # rh_img_index checks each entry, then its home-slot order, the count so
    # far and a duplicate, and stops at the first failure.
    last, seen = 0, set()
    for i, (kb, vb) in enumerate(items):
        home = _key_hash(kb) & (slots - 1)
        if home < last:
            return BAD_ORDER, None, total
        last = home
        if i + 1 > count:
            return COUNT, None, total
        if kb in seen:
            return DUPLICATE, None, total
        seen.add(kb)
    if malformed:
        return BAD_ENTRY, None, None
    if len(items) != count:
        return COUNT, None, total
    return 0, items, total


def _image_of(t):
    return t._copy(t._copy_prepare())._image()


def _load(path, data, header=None):
    """A fresh native table with ``data`` loaded as an image from the file
    ``path``: (table, None) or (table, the CorruptionError). A new file each
    time: an earlier table may still map the old one."""
    if os.path.exists(path):
        os.unlink(path)
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        t = C.KVTable()
        if header is None:  # a file shorter than a header: what pread gives, zero-filled
            header = data[:HEADER].ljust(HEADER, b"\0")
        try:
            n = t._load_image(fd, len(data), header)
        except CorruptionError as e:
            return t, e
        assert n == len(t)
        return t, None
    finally:
        os.close(fd)


def _table(pairs, core=C):
    t, buf = core.KVTable(), core.LogBuffer(1)
    for k, v in pairs:
        buf.put(t, 0, k, v)
    return t


# -- round trip -----------------------------------------------------------

KEYS = st.one_of(st.text(max_size=24), st.binary(max_size=24),
                 st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1))
SCALARS = st.one_of(st.none(), st.booleans(),
                    st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1),
                    st.floats(allow_nan=False), st.text(max_size=40), st.binary(max_size=40))
BIG = st.one_of(st.binary(min_size=257, max_size=4000), st.text(min_size=200, max_size=600))
VALUES = st.recursive(st.one_of(SCALARS, BIG),
                      lambda inner: st.one_of(
                          st.lists(inner, max_size=6),
                          st.dictionaries(st.text(max_size=8), inner, max_size=6)),
                      max_leaves=12)
CONTENT = st.dictionaries(KEYS, VALUES, max_size=40)


@SETTINGS
@given(content=CONTENT,
       junk=st.lists(st.tuples(KEYS, st.binary(min_size=1, max_size=300)), max_size=12))
@example(content={}, junk=[])
@example(content={}, junk=[("gone", b"x" * 300)])
def test_round_trip(native, tmp_path, content, junk):
    t, buf = C.KVTable(), C.LogBuffer(1)
    for k, v in junk:  # garbage in the arena; overwritten or deleted below
        buf.put(t, 0, k, v)
    for k, v in content.items():
        buf.put(t, 0, k, v)
    for k, _ in junk:
        if k not in content and k in t:
            buf.delete(t, 0, k)
    img = _image_of(t)
    code, items, total = _model(img)
    assert code == 0 and sorted(items) == sorted(t._items_raw())
    assert C.image_digest_sum(img) == P.image_digest_sum(img) == total
    assert finish_digest(total, len(t)) == t._digest()

    loaded, err = _load(str(tmp_path / "t.kvimg"), img)
    assert err is None
    assert len(loaded) == len(content)
    assert loaded.to_dict() == t.to_dict() == content
    assert sorted(loaded._items_raw()) == sorted(t._items_raw())
    assert loaded._digest() == t._digest() == finish_digest(C.image_digest_sum(img), len(loaded))
    assert _table(content.items(), P)._digest() == t._digest()  # the pure twin's digest
    assert _image_of(loaded) == img  # a loaded table writes the same image back
    assert all(loaded[k] == v for k, v in content.items())


@SETTINGS
@given(content=st.dictionaries(KEYS, st.binary(min_size=1, max_size=400), max_size=60))
def test_a_python_build_of_the_format_matches_the_native_image(native, content):
    """The plain-Python format above (hash, order, layout) is the native one:
    the hand-made images below break only the rule they mean to."""
    pairs = [(C.encode_key(k), C.pack_value(v)) for k, v in content.items()]
    t = C.KVTable()
    for kb, vb in pairs:
        t._put_raw(kb, vb)
    img = _image_of(t)
    assert _build(_in_home_order(pairs, _capacity_for(len(pairs)))) == img
    assert _model(img)[0] == 0


# -- determinism ----------------------------------------------------------

def _by_home(img):
    """The image's entries as {home slot: set of (key, value)}."""
    code, items, _ = _model(img)
    assert code == 0
    slots = struct.unpack_from("<Q", img, 32)[0]
    out = {}
    for kb, vb in items:
        out.setdefault(_key_hash(kb) & (slots - 1), set()).add((kb, vb))
    return out


def _same_image(img, plain):
    assert _by_home(img) == _by_home(plain)
    if all(len(group) == 1 for group in _by_home(plain).values()):
        assert img == plain


@SETTINGS
@given(content=st.dictionaries(KEYS, VALUES, max_size=40), seed=st.integers(0, 2 ** 32))
def test_image_bytes_depend_on_the_content_not_the_history(native, content, seed):
    """The same content built in another order, with junk puts, deletes
    (whose room the next entries of their size reuse) and overwrites in
    between: the same entries under the same home slots, and the same bytes
    when no two keys share a home slot (keys that do come out in arena
    order: see test_image_bytes_do_not_depend_on_insertion_order)."""
    rng = random.Random(seed)
    items = list(content.items())
    plain = _image_of(_table(items))

    t, buf = C.KVTable(), C.LogBuffer(1)
    for k, v in items:
        for _ in range(rng.randrange(3)):
            junk = rng.randrange(-(2 ** 63), 2 ** 63)
            if junk not in content:
                buf.put(t, 0, junk, rng.randbytes(rng.randrange(1, 600)))
                if rng.random() < 0.8:
                    buf.delete(t, 0, junk)
        buf.put(t, 0, k, v)
    for k in list(t):
        if k not in content:
            buf.delete(t, 0, k)
    _same_image(_image_of(t), plain)

    shuffled = items[:]
    rng.shuffle(shuffled)
    t = _table(shuffled)
    for k, v in rng.sample(shuffled, len(shuffled) // 2):  # overwrites move entries
        buf.put(t, 0, k, [v, "longer"])
        buf.put(t, 0, k, v)
    _same_image(_image_of(t), plain)
    assert t._digest() == _table(items)._digest()



def test_image_bytes_do_not_depend_on_insertion_order(native):
    keys = ["a", "b", "c", "d", "e"]  # "c" and "d" share home slot 2 of 8
    assert len({_key_hash(C.encode_key(k)) & 7 for k in keys}) < len(keys)
    forward = _image_of(_table((k, 1) for k in keys))
    backward = _image_of(_table((k, 1) for k in reversed(keys)))
    assert _by_home(forward) == _by_home(backward)
    assert forward == backward


# -- corruption table -----------------------------------------------------

SMALL = [("user:1", {"name": "ada", "tags": ["x", "y"]}), (b"\x00raw", b"bytes"), (7, 7),
         (-1, -1.5), ("", None), ("long-key-12345", "v"), ("big", "B" * 300),
         (2 ** 40, [1, 2, 3]), ("é", True)]


def _content_bytes(img):
    """Offsets of the bytes of an image's entries that can change what it
    holds and leave it valid: klen and vlen (within vcap's rounding), key,
    value and padding; not vcap, the header or the arena's first 8 bytes."""
    out, off = set(), HEADER + 8
    while off < len(img):
        klen, vlen, vcap = struct.unpack_from("<III", img, off)
        out.update(range(off, off + 8))
        out.update(range(off + 12, off + _size(klen, vcap)))
        off += _size(klen, vcap)
    return out


def _corruptions(img, rng, n_random):
    """(label, corrupted bytes, offsets changed) for the corruption table."""
    arena_len = len(img) - HEADER
    for n in range(len(img)):
        yield f"truncated to {n}", img[:n], set()
    for n in range(HEADER, len(img)):  # arena_len made to agree: entries cut short
        cut = bytearray(img[:n])
        struct.pack_into("<Q", cut, 24, n - HEADER)
        yield f"truncated to {n}, arena_len fixed", bytes(cut), set(range(24, 32))
    for i in list(range(HEADER)) + list(range(HEADER, min(len(img), HEADER + 300))):
        for x in (0xFF, 0x01):
            bad = bytearray(img)
            bad[i] ^= x
            yield f"byte {i} ^ {x:#x}", bytes(bad), {i}
    for s in range(0, len(img), 512):
        bad = bytearray(img)
        bad[s:s + 512] = bytes(len(bad[s:s + 512]))
        yield f"sector at {s} zeroed", bytes(bad), set(range(s, min(s + 512, len(img))))
    entries, off = [], HEADER + 8
    while off < len(img):
        entries.append(off)
        klen, _, vcap = struct.unpack_from("<III", img, off)
        off += _size(klen, vcap)
    fields = [8, 12, 16, 24, 32] + [e + d for e in entries for d in (0, 4, 8)]
    for case in range(n_random):
        bad, touched = bytearray(img), set()
        if rng.random() < 0.3:  # a u32 / u64 field set to a telling value
            at = rng.choice(fields)
            width = 8 if 16 <= at < 40 else 4
            old = int.from_bytes(bad[at:at + width], "little")
            new = rng.choice([0, 1, old - 1, old + 1, old + 8, old - 8, 2 ** 31, VALUE_MAX,
                              VALUE_MAX + 1, MAX_KEY, MAX_KEY + 1, 2 ** (8 * width) - 1,
                              arena_len, arena_len // 16, rng.getrandbits(8 * width)])
            bad[at:at + width] = (new % 2 ** (8 * width)).to_bytes(width, "little")
            touched.update(range(at, at + width))
        else:
            for _ in range(rng.randint(1, 4)):
                r = rng.random()
                i = (rng.randrange(HEADER, len(img)) if r < 0.6 else
                     rng.randrange(64) if r < 0.9 else rng.randrange(len(img)))
                bad[i] = rng.choice([rng.randrange(256), bad[i] ^ (1 << rng.randrange(8)), 0, 0xFF])
                touched.add(i)
        touched = {i for i in touched if bad[i] != img[i]}
        yield f"random {case}", bytes(bad), touched


def _check_corrupted(path, label, bad, touched, original, content_at, tally):
    code, items, total = _model(bad)
    native_sum, pure_sum = C.image_digest_sum(bad), P.image_digest_sum(bad)
    assert native_sum == pure_sum == total, (label, native_sum, pure_sum, total)
    t, err = _load(path, bad)
    if err is not None:
        assert err.reason == "bad_snapshot", label
        assert len(t) == 0 and t._items_raw() == [] and t._stats()["count"] == 0, label
        assert code and ERRORS[code] in str(err), (label, code, str(err))
        t._put_raw(b"\x02after", b"\x01")  # the emptied table still works
        assert t._items_raw() == [(b"\x02after", b"\x01")], label
        tally["refused"] += 1
        return
    assert code == 0, (label, "loaded an image the format refuses", code)
    loaded = sorted(t._items_raw())
    assert loaded == sorted(items), label
    assert native_sum is not None and finish_digest(native_sum, len(t)) == t._digest(), label
    if loaded == original:
        tally["loaded, same content"] += 1
    else:
        # Not the original: only when an entry's bytes changed (the image
        # has no checksum of its own; META's CRC32C catches that).
        assert touched & content_at, (label, "content changed by a header byte")
        tally["loaded, other content"] += 1
    del t


def test_corruption_table(native, tmp_path):
    img = _image_of(_table(SMALL))
    assert HEADER + 300 < len(img) < HEADER + 1024
    original = sorted(_table(SMALL)._items_raw())
    content_at = _content_bytes(img)
    path = str(tmp_path / "c.kvimg")
    tally = {"refused": 0, "loaded, same content": 0, "loaded, other content": 0}
    cases = 0
    for label, bad, touched in _corruptions(img, random.Random(20240611), 3000):
        _check_corrupted(path, label, bad, touched, original, content_at, tally)
        cases += 1
    assert cases == sum(tally.values()) > 15_000
    # Header bytes past the fields and entry padding are checked too, so nearly
    # every corruption outside an entry's key and value bytes is refused.
    assert tally["refused"] > 10_000 and tally["loaded, same content"] > 0
    print(f"\n{cases} corrupted images: {tally}")


def test_corrupted_empty_image(native, tmp_path):
    img = _image_of(C.KVTable())
    assert len(img) == HEADER + 8 and _model(img) == (0, [], 0)
    path = str(tmp_path / "e.kvimg")
    tally = {"refused": 0, "loaded, same content": 0, "loaded, other content": 0}
    for label, bad, touched in _corruptions(img, random.Random(7), 500):
        _check_corrupted(path, label, bad, touched, [], set(), tally)
    assert tally["loaded, other content"] == 0 and tally["refused"] > 4000
    print(f"\n{sum(tally.values())} corrupted empty images: {tally}")


def test_a_short_header_argument_is_a_value_error(native, tmp_path):
    img = _image_of(_table(SMALL))
    with pytest.raises(ValueError):
        _load(str(tmp_path / "h.kvimg"), img, header=img[:HEADER - 1])
    t, err = _load(str(tmp_path / "h.kvimg"), img)
    assert err is None
    with pytest.raises(ValueError):  # only into an empty table
        t._load_image(0, len(img), img[:HEADER])


# -- one broken rule each -------------------------------------------------

def _three():
    """Three (key, value) pairs with distinct home slots in 8 slots, in
    home order, values long enough that a count of 4 still fits the arena."""
    pairs, homes = [], set()
    for i in range(100):
        kb = C.encode_key(f"key{i}")
        if _key_hash(kb) & 7 not in homes:
            homes.add(_key_hash(kb) & 7)
            pairs.append((kb, C.pack_value("v" * (20 + i))))
        if len(pairs) == 3:
            return _in_home_order(pairs, 8)
    raise AssertionError("no three keys with distinct homes")


def _bad_images():
    a, b, c = _three()
    same_home_other = next((C.encode_key(f"x{i}"), C.pack_value(i)) for i in range(1000)
                           if _key_hash(C.encode_key(f"x{i}")) & 7 == _key_hash(a[0]) & 7)
    good = _build([a, b, c])

    def patched(at, raw):
        out = bytearray(good)
        out[at:at + len(raw)] = raw
        return bytes(out)

    e = HEADER + 8  # the first entry
    return {
        # rule broken: (image, error, image_digest_sum checks it)
        "out of home-slot order": (_build([b, a, c]), BAD_ORDER, False),
        "same key twice": (_build([a, (a[0], C.pack_value("other")), b, c]), DUPLICATE, False),
        "same entry twice": (_build([a, a, b, c]), DUPLICATE, False),
        "same key twice, another key between": (
            _build(_in_home_order([a, same_home_other, (a[0], b"\xc0"), b], 8)), DUPLICATE, False),
        "count one more": (_build([a, b, c], count=4), COUNT, True),
        "count one less": (_build([a, b, c], count=2), COUNT, True),
        "count zero": (_build([a, b, c], count=0), COUNT, True),
        "nonzero header padding at 40": (patched(40, b"\x01"), BAD_HEADER, True),
        "nonzero header padding at 63": (patched(63, b"\x80"), BAD_HEADER, True),
        "vcap past the rounding slack": (_build([(a[0], a[1], len(a[1]) + 8), b, c]),
                                         BAD_ENTRY, True),
        "vcap below vlen": (_build([(a[0], a[1], len(a[1]) - 1), b, c]), BAD_ENTRY, True),
        "vcap with the dead bit": (patched(e + 8, struct.pack("<I", 0x80000000 | len(a[1]))),
                                   BAD_ENTRY, True),
        "key tag 0": (_build(_in_home_order([(b"\x00abc", b"\x01"), b, c], 8)), BAD_ENTRY, True),
        "key tag 4": (_build(_in_home_order([(b"\x04abc", b"\x01"), b, c], 8)), BAD_ENTRY, True),
        "int key of 8 bytes": (_build(_in_home_order([(b"\x03" + bytes(7), b"\x01"), b, c], 8)),
                               BAD_ENTRY, True),
        "int key of 10 bytes": (_build(_in_home_order([(b"\x03" + bytes(9), b"\x01"), b, c], 8)),
                                BAD_ENTRY, True),
        "klen 0": (_build([(b"", b"\x01\x02\x03\x04\x05\x06\x07\x08"), b, c]), BAD_ENTRY, True),
        "vlen 0": (_build([(a[0], b"", 4), b, c]), BAD_ENTRY, True),
        "klen past the arena": (patched(e, struct.pack("<I", 1 << 20)), BAD_ENTRY, True),
        "klen past the key limit": (patched(e, struct.pack("<I", MAX_KEY + 1)), BAD_ENTRY, True),
        "slots not the capacity for the count": (_build([a, b, c], slots=16), BAD_HEADER, True),
        "slots not a power of two": (_build([a, b, c], slots=12, slot_bits=4), BAD_HEADER, True),
        "slot_bits not log2 slots": (_build([a, b, c], slot_bits=4), BAD_HEADER, True),
        "version 2": (_build([a, b, c], version=2), BAD_HEADER, True),
        "magic": (_build([a, b, c], magic=b"RHKVIMG2"), BAD_HEADER, True),
        "arena_len one entry short": (patched(24, struct.pack("<Q", len(good) - HEADER - 8)),
                                      BAD_HEADER, True),
        "count past what the arena can hold": (_build([a, b, c], count=10 ** 6), BAD_HEADER, True),
        "arena base not zero": (patched(HEADER + 3, b"\x01"), BAD_ENTRY, True),
        "eight zero bytes at the end": (good + bytes(8), BAD_HEADER, True),
        "eight zero bytes at the end, arena_len agreeing": (
            _header(3, len(good) - HEADER + 8) + good[HEADER:] + bytes(8), BAD_ENTRY, True),
        "an entry that runs past the end": (
            _header(3, len(good) - HEADER - 8) + good[HEADER:-8], BAD_ENTRY, True),
        # controls: valid images hand-made the same way
        "valid": (good, 0, True),
        "valid, two keys in one home slot": (_build(_in_home_order([a, same_home_other, b], 8)),
                                             0, True),
    }


BAD = _bad_images()


@pytest.mark.parametrize("rule", list(BAD))
def test_an_image_that_breaks_one_rule(core, tmp_path, rule):
    img, code, summed = BAD[rule]
    model_code, _, model_total = _model(img)
    assert model_code == code
    total = core.image_digest_sum(img)
    assert total == model_total
    assert (total is None) == (summed and code != 0)
    if core.IMPLEMENTATION != "native":
        return
    assert P.image_digest_sum(img) == total
    t, err = _load(str(tmp_path / "r.kvimg"), img)
    if code == 0:
        assert err is None and finish_digest(total, len(t)) == t._digest()
        assert _image_of(t) == img
        return
    assert isinstance(err, CorruptionError) and err.reason == "bad_snapshot"
    assert ERRORS[code] in str(err)
    assert len(t) == 0 and t._items_raw() == []


@pytest.mark.parametrize("where", ["header byte 64", "header byte 4095", "entry padding"])
def test_zero_areas_are_checked(native, tmp_path, where):
    good = _build(_three())
    bad = bytearray(good)
    if where == "entry padding":
        klen, vlen, vcap = struct.unpack_from("<III", good, HEADER + 8)
        assert vcap > vlen
        bad[HEADER + 8 + 12 + klen + vlen] = 1
    else:
        bad[int(where.split()[-1])] = 1
    bad = bytes(bad)
    t, err = _load(str(tmp_path / "z.kvimg"), bad)
    sums = C.image_digest_sum(bad), P.image_digest_sum(bad)
    assert sums[0] == sums[1]
    assert isinstance(err, CorruptionError) and sums[0] is None


# -- a loaded table takes writes ------------------------------------------

def _check_table(t, model, core=C):
    assert len(t) == len(model)
    assert t.to_dict() == model
    assert t._digest() == _table(model.items(), core)._digest()


def test_a_loaded_table_takes_writes_and_leaves_its_file(native, tmp_path):
    rng = random.Random(3)
    model = {f"k{i}": rng.randbytes(rng.randrange(1, 200)) for i in range(200)}
    model.update({f"n{i}": i for i in range(50)})
    model.update({i: {"i": i, "s": "x" * (i % 40)} for i in range(100)})
    img = _image_of(_table(model.items()))
    path = str(tmp_path / "w.kvimg")
    t, err = _load(path, img)
    assert err is None
    other, err = _load(path + "2", img)  # a second table mapping the same bytes
    assert err is None
    stat = os.stat(path)
    buf = C.LogBuffer(1)

    for i in range(50):  # incr in place (the value's room is in the mapped page)
        buf.incr(t, 0, f"n{i}", 1000 + i)
        model[f"n{i}"] += 1000 + i
    buf.incr(t, 0, "n0", 2 ** 40)
    model["n0"] += 2 ** 40
    buf.incr(t, 0, "fresh", 1.5)
    model["fresh"] = 1.5
    for i in range(0, 198, 3):  # shorter, longer, deleted
        buf.put(t, 0, f"k{i}", b"s")
        model[f"k{i}"] = b"s"
        model[f"k{i + 1}"] = rng.randbytes(500)
        buf.put(t, 0, f"k{i + 1}", model[f"k{i + 1}"])
        buf.delete(t, 0, f"k{i + 2}")
        del model[f"k{i + 2}"]
    for i in range(100, 400):
        buf.put(t, 0, i, [i])
        model[i] = [i]
    _check_table(t, model)

    for i in range(3000):  # past the mapping's reservation: the arena moves
        buf.put(t, 0, f"big{i}", b"B" * 1000)
        model[f"big{i}"] = b"B" * 1000
    _check_table(t, model)
    for k in list(model):  # garbage, compaction, a smaller table
        if not (isinstance(k, str) and k.startswith("n")):
            buf.delete(t, 0, k)
            del model[k]
    _check_table(t, model)

    with open(path, "rb") as f:
        assert f.read() == img
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    code, items, total = _model(img)
    assert sorted(other._items_raw()) == sorted(items)  # the other mapping: untouched
    assert finish_digest(total, len(other)) == other._digest()
    t._clear()
    assert len(t) == 0 and len(other) == len(items)


def test_a_loaded_big_table_compacts_in_its_mapping(native, tmp_path):
    """An image bigger than the compaction threshold: deletes leave garbage
    in the mapped arena, compaction moves entries inside it."""
    model = {i: bytes([i % 251]) * 100 for i in range(3000)}
    img = _image_of(_table(model.items()))
    assert len(img) - HEADER > 256 * 1024
    path = str(tmp_path / "big.kvimg")
    t, err = _load(path, img)
    assert err is None
    buf = C.LogBuffer(1)
    for i in range(0, 3000):
        if i % 4:
            buf.delete(t, 0, i)
            del model[i]
    for i in range(0, 3000, 8):
        buf.put(t, 0, i, b"n" * 50)
        model[i] = b"n" * 50
    assert t._stats()["arena_len"] < len(img) - HEADER  # compacted
    _check_table(t, model)
    with open(path, "rb") as f:
        assert f.read() == img
    assert _by_home(_image_of(t)) == _by_home(_image_of(_table(model.items())))


def test_only_the_native_core_maps_images(core):
    """snapshot.py loads an image only into a table with ``_load_image``; the
    pure twin reads Arrow files, and sums images for the cross-check."""
    assert hasattr(core.KVTable(), "_load_image") == (core.IMPLEMENTATION == "native")
    assert core.image_digest_sum(b"") is None
    assert core.image_digest_sum(bytearray(_build(_three()))) == _model(_build(_three()))[2]
