"""The native core itself: it loaded, its C pieces are right, its table holds up.

Differential tests against the pure twin are in test_core_twins.py; these
check what only the native core has (compiled modules, CRC32C backends, the
hash table's growth, shrink and compaction, the .pxd constants).
"""

import gc
import importlib.machinery
import os
import pickle
import random
import subprocess
import sys
import weakref
from collections.abc import ItemsView, KeysView, Mapping, ValuesView

import crc32c as crc32c_pkg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

import rehydrate._core as C
import rehydrate._pure as P
from rehydrate import _format as F
from rehydrate._core import codec as native_codec
from rehydrate._core import frames as native_frames
from rehydrate._core import kvtable as native_kvtable



@pytest.fixture(autouse=True)
def core():
    """These tests name both cores themselves: run each once, not per core."""
    yield C


# ---------------------------------------------------------------- it loaded

def test_native_core_is_the_compiled_extension():
    assert C.IMPLEMENTATION == "native"
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for mod in (native_codec, native_frames, native_kvtable):
        assert mod.__file__.endswith(suffixes), mod.__file__
    # The installed package, not a source tree on sys.path.
    assert os.sep + "src" + os.sep + "rehydrate" not in C.__file__


def test_native_exports_exactly_the_twins_names():
    assert sorted(C.__all__) == sorted(P.__all__)
    for name in C.__all__:
        assert hasattr(C, name), name


def test_format_pxd_constants_match_format_py():
    native = native_codec._format_constants()
    assert len(native) >= 30
    for name, value in native.items():
        assert getattr(F, name) == value, name
    # Every integer constant of _format.py that the format defines is mirrored.
    for name in dir(F):
        v = getattr(F, name)
        if name.isupper() and type(v) is int and not name.startswith("INT64"):
            assert name in native, f"{name} missing from _format.pxd"


# ---------------------------------------------------------------- CRC32C

CRC_VECTORS = [
    (b"", 0),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
]


@pytest.fixture(params=["sse4.2", "software"])
def crc_backend(request):
    got = native_codec._crc32c_select(request.param)
    if got != request.param:
        pytest.skip("this CPU has no SSE4.2")
    yield got
    native_codec._crc32c_select("sse4.2")


def test_crc32c_known_vectors(crc_backend):
    assert C.crc32c_backend() == crc_backend
    for data, want in CRC_VECTORS:
        assert C.crc32c(data) == want, data


@given(st.binary(max_size=300), st.binary(max_size=300), st.integers(0, 2**32 - 1))
def test_crc32c_equals_crc32c_package_and_continues(a, b, seed):
    for backend in ("software", "sse4.2"):
        native_codec._crc32c_select(backend)
        assert C.crc32c(a + b, seed) == crc32c_pkg.crc32c(a + b, seed)
        assert C.crc32c(b, C.crc32c(a)) == C.crc32c(a + b)
    native_codec._crc32c_select("sse4.2")


def test_crc32c_unaligned_and_long_buffers_agree_across_backends():
    data = random.Random(3).randbytes(1 << 20)
    for start in range(9):
        view = memoryview(data)[start:]
        native_codec._crc32c_select("software")
        soft = C.crc32c(view)
        native_codec._crc32c_select("sse4.2")
        assert C.crc32c(view) == soft == crc32c_pkg.crc32c(bytes(view))


def test_crc32c_env_var_forces_software():
    code = (
        "import rehydrate._core as C; "
        "print(C.crc32c_backend(), C.crc32c(b'123456789'))"
    )
    env = dict(os.environ, REHYDRATE_CRC32C_SOFTWARE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, cwd="/").stdout.split()
    assert out == ["software", str(0xE3069283)]


# ---------------------------------------------------------------- LZ4

def test_lz4_roundtrip_of_compressible_and_random_data():
    rnd = random.Random(1)
    for n in (0, 1, 5, 12, 13, 100, 4096, 300_000):
        for data in (bytes(n), rnd.randbytes(n), (b"key:%d" * n)[:n]):
            block = C.lz4_compress(data)
            assert C.lz4_decompress(block, len(data)) == data


def test_lz4_rejects_offset_zero_and_offsets_before_the_start():
    # token: 4 literals + 4-byte match, "abcd", offset, then an 8-literal tail.
    good = b"\x40abcd\x04\x00\x80abcdefgh"
    assert C.lz4_decompress(good, 16) == P.lz4_decompress(good, 16) == b"abcdabcdabcdefgh"
    with pytest.raises(ValueError, match="offset 0"):
        C.lz4_decompress(b"\x40abcd\x00\x00\x80abcdefgh", 16)
    with pytest.raises(ValueError, match="before the start"):
        C.lz4_decompress(b"\x40abcd\x05\x00\x80abcdefgh", 16)


def test_lz4_wrong_length_and_overrun():
    block = C.lz4_compress(b"hello world" * 10)
    with pytest.raises(ValueError, match="wrong length"):
        C.lz4_decompress(block, 111)
    with pytest.raises(ValueError, match="does not decompress"):
        C.lz4_decompress(block, 109)
    with pytest.raises(ValueError, match="raw length out of range"):
        C.lz4_decompress(block, -1)


# ---------------------------------------------------------------- the hash table

KEYS = st.one_of(
    st.binary(max_size=12),
    st.text(max_size=6),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([b"", "", 0, -1, 2**63 - 1, -(2**63), "é", b"\x00"]),
)


class TableMatchesDict(RuleBasedStateMachine):
    """A KVTable and a dict of encoded bytes stay equal under any op sequence."""

    def __init__(self):
        super().__init__()
        self.t = C.KVTable()
        self.model = {}

    @rule(key=KEYS, size=st.integers(0, 70))
    def put(self, key, size):
        kb = C.encode_key(key)
        vb = C.pack_value(bytes([size % 251]) * size)
        self.t._put_raw(kb, vb)
        self.model[kb] = vb

    @rule(key=KEYS)
    def delete(self, key):
        kb = C.encode_key(key)
        assert self.t._delete_raw(kb) == (kb in self.model)
        self.model.pop(kb, None)

    @rule(key=KEYS, delta=st.one_of(st.integers(-1000, 1000), st.floats(-1e3, 1e3)))
    def incr(self, key, delta):
        kb = C.encode_key(key)
        try:
            want = P.incr_value(self.model.get(kb), delta)
        except Exception as e:  # the table must refuse the same way and stay as is
            with pytest.raises(type(e)):
                self.t._incr_raw(kb, delta)
            return
        assert self.t._incr_raw(kb, delta) == want
        self.model[kb] = want

    @rule(n=st.integers(0, 3000))
    def bulk_put_then_delete_most(self, n):
        # Forces growth, then shrink, and garbage past the compaction threshold.
        kbs = [C.encode_key(f"bulk:{i}") for i in range(n)]
        for kb in kbs:
            vb = C.pack_value(kb * 5)
            self.t._put_raw(kb, vb)
            self.model[kb] = vb
        for kb in kbs[: n - n // 10]:
            assert self.t._delete_raw(kb)
            del self.model[kb]

    @rule()
    def clear(self):
        self.t._clear()
        self.model.clear()

    @invariant()
    def same_contents(self):
        assert len(self.t) == len(self.model)
        assert dict(self.t._items_raw()) == self.model
        stats = self.t._stats()
        if stats["slots"]:
            assert stats["count"] * 10 <= stats["slots"] * 7  # load factor
        assert stats["garbage"] <= max(65536, stats["arena_len"] // 2)
        assert self.t.memory_bytes == stats["arena_cap"] + 16 * stats["slots"]


def test_table_matches_a_dict_model_under_random_ops():
    run_state_machine_as_test(
        TableMatchesDict,
        settings=settings(max_examples=60, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )


def test_table_grows_and_shrinks_and_finds_every_key():
    t = C.KVTable()
    n = 50_000
    for i in range(n):
        t._put_raw(C.encode_key(i), C.pack_value(i))
    assert t._stats()["slots"] >= n / 0.7
    assert all(t[i] == i for i in range(0, n, 7))
    for i in range(n - 10):
        assert t._delete_raw(C.encode_key(i))
    assert len(t) == 10
    assert t._stats()["slots"] <= 64
    assert sorted(t) == list(range(n - 10, n))


def test_overwriting_with_larger_values_compacts_the_arena():
    t = C.KVTable()
    keys = [C.encode_key(f"k{i}") for i in range(2000)]
    for size in range(1, 60):
        for kb in keys:
            t._put_raw(kb, C.pack_value(b"x" * size))
        s = t._stats()
        assert s["garbage"] <= max(65536, s["arena_len"] // 2)
    assert all(t._get_raw(kb) == C.pack_value(b"x" * 59) for kb in keys)
    # Live data is ~2000 * 80 bytes; the arena must not keep all 59 generations.
    assert t._stats()["arena_len"] < 2000 * 80 * 3


def test_incr_rewrites_in_place_after_first_growth():
    t = C.KVTable()
    kb = C.encode_key("n")
    t._incr_raw(kb, 1)
    before = t._stats()["arena_len"]
    for _ in range(1000):
        t._incr_raw(kb, 1_000_000_007)
    assert t._stats()["arena_len"] == before
    assert t["n"] == 1 + 1000 * 1_000_000_007


def test_mutation_during_iteration_raises_runtime_error():
    t = C.KVTable()
    for i in range(10):
        t._put_raw(C.encode_key(i), C.pack_value(i))
    it = iter(t)
    next(it)
    t._put_raw(C.encode_key(0), C.pack_value("changed"))
    with pytest.raises(RuntimeError):
        next(it)
    it = iter(t.items())
    next(it)
    t._delete_raw(C.encode_key(5))
    with pytest.raises(RuntimeError):
        list(it)


def test_mapping_surface():
    t = C.KVTable()
    t._put_raw(C.encode_key("a"), C.pack_value([1, {"x": 2}]))
    t._put_raw(C.encode_key(b"a"), C.pack_value(None))
    t._put_raw(C.encode_key(1), C.pack_value(1.5))
    assert isinstance(t, Mapping)
    assert isinstance(t.keys(), KeysView)
    assert isinstance(t.values(), ValuesView)
    assert isinstance(t.items(), ItemsView)
    assert t == {"a": [1, {"x": 2}], b"a": None, 1: 1.5}
    assert t != {"a": 1}
    assert t["a"] == [1, {"x": 2}] and t[b"a"] is None and t.get(1) == 1.5
    assert t.get(2.5, "d") == "d" and 2.5 not in t and [] not in t
    with pytest.raises(KeyError):
        t["missing"]
    with pytest.raises(TypeError):
        hash(t)
    assert repr(t) == "<KVTable 3 keys>"
    assert pickle.loads(pickle.dumps(t)) == t
    r = weakref.ref(t)
    assert r() is t
    del t
    gc.collect()
    assert r() is None
