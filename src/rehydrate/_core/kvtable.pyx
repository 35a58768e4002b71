# cython: language_level=3
"""KVTable: the key/value table (native).

Twin of ``rehydrate._pure.kvtable``. Storage is kvcore.h's open-addressing
table over an arena of canonical key bytes + msgpack value bytes; Python sees
a read-only Mapping that decodes a value when it is read, plus the ``_raw``
surface the writer (LogBuffer) and tests use. Replay (scanner.scan_frames)
writes into ``.kv`` directly.
"""

from collections.abc import ItemsView, KeysView, Mapping, ValuesView

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from .includes.kvcore cimport (
    RH_ENTRY_DEAD, RH_VALUE_MAX, rh_arena_copy, rh_arena_next, rh_arena_prepare, rh_clear,
    rh_delete, rh_digest_acc, rh_digest_acc_init, rh_digest_acc_sum, rh_entry, rh_entry_at,
    rh_entry_key, rh_entry_value, rh_find, rh_incr, rh_key, rh_key_from_bytes, rh_kv,
    rh_bulk_load, rh_kv_digest, rh_kv_end_bulk, rh_memory_bytes, rh_next_slot,
    rh_pairs_digest_sum, rh_put,
    rh_reserve,
)
from .includes.kvimage cimport (
    RH_IMG_HEADER, rh_img_build, rh_img_digest_sum, rh_img_header, rh_img_map, rh_img_read_header,
    rh_img_size,
)
from .includes.xxh64 cimport (
    rh_xxh64, rh_xxh64_digest, rh_xxh64_reset, rh_xxh64_state, rh_xxh64_update, rh_xxh64_x4,
)
from .includes.payload cimport rh_key_wellformed
from .includes.valcodec cimport RH_INCR_OK, RH_NUM_MAX_BYTES, rh_mp_skip, rh_num
from .includes.rhbuf cimport rh_buf, rh_buf_free
from .codec cimport (
    decode_key_ptr, fast_delta, incr_error, incr_value_generic, key_view, pack_into, unpack_ptr,
)

import msgpack

from rehydrate.errors import CorruptionError

_unpackb = msgpack.unpackb
_Packer = msgpack.Packer

cdef enum:
    # Values decoded (to_dict) or encoded (_put_items) per msgpack call: one
    # array of this many, so the per-value cost is msgpack's C loop, not a
    # Python-level call each; small enough that the array's bytes stay small.
    BULK_VALUES = 8192


cdef inline bytes _as_bytes(obj):
    # The twin calls bytes() on raw keys and values; so do we (same errors).
    return obj if type(obj) is bytes else bytes(obj)


cdef inline void _raw_key(bytes kb, rh_key *k) noexcept:
    rh_key_from_bytes(k, <const unsigned char *>PyBytes_AS_STRING(kb), <size_t>PyBytes_GET_SIZE(kb))


cdef inline object _value_of(rh_kv *kv, int64_t slot):
    cdef rh_entry *e = rh_entry_at(kv, kv.slots[slot].off)
    return unpack_ptr(rh_entry_value(e), e.vlen)


cdef inline bytes _value_bytes(rh_kv *kv, int64_t slot):
    cdef rh_entry *e = rh_entry_at(kv, kv.slots[slot].off)
    return PyBytes_FromStringAndSize(<const char *>rh_entry_value(e), e.vlen)


cdef inline bint _is_container(unsigned char b) noexcept:
    # fixmap, fixarray; ext 8/16/32; fixext; array and map 16/32
    return (0x80 <= b <= 0x9F) or (0xC7 <= b <= 0xC9) or (0xD4 <= b <= 0xD8) or (0xDC <= b <= 0xDF)


cdef inline bint _bulk_decodable(rh_entry *e) noexcept:
    # A container value that is exactly one msgpack object: it may go to
    # the batch's one unpackb call (scalars are decoded natively).
    cdef size_t used
    return (e.vlen > 0 and _is_container(rh_entry_value(e)[0])
            and rh_mp_skip(rh_entry_value(e), e.vlen, &used) == 0 and used == e.vlen)


cdef inline unsigned char *_array32_header(unsigned char *p, Py_ssize_t n) noexcept:
    # A msgpack array 32 of n elements (the bulk decodes' one unpackb call);
    # returns where the elements go.
    p[0] = 0xDD
    p[1] = <unsigned char>(n >> 24)
    p[2] = <unsigned char>(n >> 16)
    p[3] = <unsigned char>(n >> 8)
    p[4] = <unsigned char>n
    return p + 5


cdef inline bytes _key_bytes(rh_kv *kv, int64_t slot):
    cdef rh_entry *e = rh_entry_at(kv, kv.slots[slot].off)
    return PyBytes_FromStringAndSize(<const char *>rh_entry_key(e), e.klen)


cdef inline object _key_of(rh_kv *kv, int64_t slot):
    cdef rh_entry *e = rh_entry_at(kv, kv.slots[slot].off)
    return decode_key_ptr(rh_entry_key(e), e.klen)


cdef int _put(rh_kv *kv, const rh_key *k, bytes vb, size_t vcap_min) except -1:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(vb)
    if <size_t>n > RH_VALUE_MAX:
        raise OverflowError(f"value of {n} bytes is too large for a KVTable")
    if rh_put(kv, k, <const unsigned char *>PyBytes_AS_STRING(vb), <size_t>n, vcap_min) < 0:
        raise MemoryError()
    return 0


cdef class _KVTableIter:
    """Keys in slot order; RuntimeError once the table changes (like dict)."""
    cdef KVTable table
    cdef uint64_t pos
    cdef uint64_t version

    def __iter__(self):
        return self

    def __next__(self):
        cdef rh_kv *kv = &self.table.kv
        if kv.version != self.version:
            raise RuntimeError("table changed during iteration")
        cdef int64_t i = rh_next_slot(kv, self.pos)
        if i < 0:
            raise StopIteration
        self.pos = <uint64_t>i + 1
        return _key_of(kv, i)


cdef class KVTable:
    """A live, read-only mapping view over one table's state.

    Reads decode the stored msgpack value each time; a mutation of the table
    during iteration raises RuntimeError (as ``dict`` does).
    """

    def __cinit__(self):
        memset(&self.kv, 0, sizeof(rh_kv))

    def __dealloc__(self):
        rh_clear(&self.kv)

    # -- Mapping surface -------------------------------------------------
    def __len__(self):
        return self.kv.count

    def __getitem__(self, key):
        cdef rh_key k
        cdef unsigned char ibuf[8]
        key_view(key, &k, ibuf, False)
        cdef int64_t at = rh_find(&self.kv, &k)
        if at < 0:
            raise KeyError(key)
        return _value_of(&self.kv, at)

    def get(self, key, default=None):
        cdef rh_key k
        cdef unsigned char ibuf[8]
        if key_view(key, &k, ibuf, True):
            return default
        cdef int64_t at = rh_find(&self.kv, &k)
        if at < 0:
            return default
        return _value_of(&self.kv, at)

    def __contains__(self, key):
        cdef rh_key k
        cdef unsigned char ibuf[8]
        if key_view(key, &k, ibuf, True):
            return False
        return rh_find(&self.kv, &k) >= 0

    def __iter__(self):
        cdef _KVTableIter it = _KVTableIter.__new__(_KVTableIter)
        it.table = self
        it.pos = 0
        it.version = self.kv.version
        return it

    def keys(self):
        return KeysView(self)

    def values(self):
        return ValuesView(self)

    def items(self):
        return ItemsView(self)

    def to_dict(self):
        """A plain dict of decoded keys and values (a copy).

        Container values (maps, arrays, ext) are decoded BULK_VALUES at a
        time: their stored bytes, each checked to be exactly one msgpack
        object (rh_mp_skip), are laid end to end after an array header and
        given to one ``msgpack.unpackb``, which is what ``unpack_value`` calls
        on each of them alone (same options; an element that is exactly one
        object parses from its own bytes). Should that call raise, the
        batch's values are decoded one by one, so the results and errors are
        ``unpack_value``'s in every case; scalars are decoded natively, as
        ``unpack_value`` does.
        """
        cdef dict out = {}
        cdef uint64_t version = self.kv.version
        cdef int64_t *slots = <int64_t *>malloc(BULK_VALUES * sizeof(int64_t))
        cdef uint8_t *bulk = <uint8_t *>malloc(BULK_VALUES)
        cdef int64_t i = rh_next_slot(&self.kv, 0)
        cdef Py_ssize_t n, j, b, nbulk
        cdef uint64_t total
        cdef rh_entry *e
        cdef unsigned char *p
        cdef bytes buf
        cdef list decoded
        if slots == NULL or bulk == NULL:
            free(slots)
            free(bulk)
            raise MemoryError()
        try:
            while i >= 0:
                # Pass 1, allocating nothing: the batch's slots, and which
                # values go to msgpack together.
                n = nbulk = 0
                total = 0
                while i >= 0 and n < BULK_VALUES:
                    slots[n] = i
                    e = rh_entry_at(&self.kv, self.kv.slots[i].off)
                    bulk[n] = _bulk_decodable(e)
                    if bulk[n]:
                        nbulk += 1
                        total += e.vlen
                    n += 1
                    i = rh_next_slot(&self.kv, <uint64_t>i + 1)
                decoded = None
                if nbulk > 1:
                    buf = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(5 + total))
                    # Allocation can run finalizers, which could write the table.
                    if self.kv.version != version:
                        raise RuntimeError("table changed during iteration")
                    p = _array32_header(<unsigned char *>PyBytes_AS_STRING(buf), nbulk)
                    for j in range(n):
                        if bulk[j]:
                            e = rh_entry_at(&self.kv, self.kv.slots[slots[j]].off)
                            memcpy(p, rh_entry_value(e), e.vlen)
                            p += e.vlen
                    try:
                        decoded = _unpackb(buf)
                    except Exception:  # noqa - one by one below: unpack_value's answer
                        decoded = None
                    buf = None
                    if decoded is not None and len(decoded) != nbulk:
                        decoded = None
                b = 0
                for j in range(n):
                    if self.kv.version != version:
                        raise RuntimeError("table changed during iteration")
                    k = _key_of(&self.kv, slots[j])
                    if self.kv.version != version:
                        raise RuntimeError("table changed during iteration")
                    if decoded is not None and bulk[j]:
                        v = decoded[b]
                        b += 1
                    else:
                        v = _value_of(&self.kv, slots[j])
                    if self.kv.version != version:
                        raise RuntimeError("table changed during iteration")
                    out[k] = v
                # Finalizers run by the allocations above could have written
                # the table; the next slot is found afresh from the last one.
                if self.kv.version != version:
                    raise RuntimeError("table changed during iteration")
        finally:
            free(slots)
            free(bulk)
        return out

    def to_arrow(self):
        """The table as a pyarrow.Table of ``key`` and ``value`` columns
        (docs/tables.md, "Data out"): one consistent state, decoded."""
        from rehydrate.export import kv_to_arrow

        return kv_to_arrow(self, self._export_lock)

    def __eq__(self, other):
        if isinstance(other, Mapping) or isinstance(other, KVTable):
            return self.to_dict() == dict(other.items())
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        return f"<KVTable {self.kv.count} keys>"

    @property
    def ready(self):
        """True: the store hands out a table object only once its state is in
        (a background open's not-ready tables are views; docs/warmup.md)."""
        return True

    def wait_ready(self, timeout=None):
        """True at once (see ``ready``)."""
        return True

    @property
    def memory_bytes(self):
        """Bytes this table holds: arena capacity plus the slot array."""
        return rh_memory_bytes(&self.kv)

    def __reduce__(self):
        return (_rebuild, (self._items_raw(),))

    # -- raw surface for the writer and replay ---------------------------
    def _get_raw(self, kb):
        cdef rh_key k
        kb = _as_bytes(kb)
        _raw_key(kb, &k)
        cdef int64_t at = rh_find(&self.kv, &k)
        return None if at < 0 else _value_bytes(&self.kv, at)

    def _put_raw(self, kb, vb):
        cdef rh_key k
        kb = _as_bytes(kb)
        vb = _as_bytes(vb)
        _raw_key(kb, &k)
        _put(&self.kv, &k, vb, 0)

    def _put_items(self, items):
        """Put each ``(key, value)`` of ``items``, decoded pairs: the key as
        a read takes it, the value anything ``pack_value`` encodes. What a
        migration's result is built with: one pass, no intermediate bytes
        objects. UnsupportedKeyError, ValueEncodingError or OverflowError at
        the first pair the table cannot hold (the pairs before it are in).

        Values are encoded BULK_VALUES at a time, as one msgpack array by a
        Packer with ``pack_value``'s options (its bytes are the elements'
        bytes end to end, each what ``pack_value`` gives), cut at each
        element's end (rh_mp_skip). A batch the Packer refuses is encoded
        one value at a time, so errors are ``pack_value``'s, at the pair
        that has them.
        """
        cdef list keys, values
        cdef Py_ssize_t n
        packer = _Packer(use_bin_type=True, autoreset=True)
        it = iter(items)
        while True:
            keys, values = [], []
            n = 0
            try:
                for key, value in it:
                    keys.append(key)
                    values.append(value)
                    n += 1
                    if n == BULK_VALUES:
                        break
            except BaseException:
                self._put_batch(keys, values, packer)  # the pairs before it are in
                raise
            if n:
                self._put_batch(keys, values, packer)
            if n < BULK_VALUES:
                return

    cdef _put_batch(self, list keys, list values, packer):
        cdef rh_key k
        cdef unsigned char ibuf[8]
        cdef rh_buf vb
        cdef Py_ssize_t j, n = len(keys)
        cdef size_t pos, end, used
        cdef const unsigned char *p
        cdef bytes packed = None
        if n == 0:
            return
        try:
            packed = packer.pack(values)
        except Exception:  # noqa - one by one below: pack_value's error, in order
            packed = None
        if packed is not None:
            p = <const unsigned char *>PyBytes_AS_STRING(packed)
            end = <size_t>PyBytes_GET_SIZE(packed)
            pos = 1 if n < 16 else (3 if n < 0x10000 else 5)  # the array's header
            for j in range(n):
                key_view(keys[j], &k, ibuf, False)
                if rh_mp_skip(p + pos, end - pos, &used) != 0:
                    raise SystemError("msgpack's Packer wrote an array that does not parse")
                if used > RH_VALUE_MAX:
                    raise OverflowError(f"value of {used} bytes is too large for a KVTable")
                if rh_put(&self.kv, &k, p + pos, used, 0) < 0:
                    raise MemoryError()
                pos += used
            return
        memset(&vb, 0, sizeof(rh_buf))
        try:
            for j in range(n):
                # The key is a view into keys[j], which the list keeps alive.
                key_view(keys[j], &k, ibuf, False)
                vb.len = 0
                pack_into(values[j], &vb)
                if vb.len > RH_VALUE_MAX:
                    raise OverflowError(f"value of {vb.len} bytes is too large for a KVTable")
                if rh_put(&self.kv, &k, vb.data, vb.len, 0) < 0:
                    raise MemoryError()
        finally:
            rh_buf_free(&vb)

    def _put_pairs(self, list pairs):
        """Put every ``(key, value)`` of ``pairs`` (decoded pairs) when all
        of them can be held: True. False, with nothing put, when one key is
        not a key or one value does not encode in one bulk pack (the caller
        then puts them one by one, so errors are per pair and the twins'
        own). The values are packed as one msgpack array by a Packer with
        ``pack_value``'s options and cut at each element's end (as
        ``_put_items``); the keys are checked before anything is put."""
        cdef Py_ssize_t j, n = len(pairs)
        cdef rh_key *ks
        cdef unsigned char *ibufs
        cdef size_t pos, end, used
        cdef const unsigned char *p
        cdef bytes packed
        cdef list values
        cdef tuple pair
        if n == 0:
            return True
        for j in range(n):
            if type(pairs[j]) is not tuple or len(<tuple>pairs[j]) != 2:
                return False
        values = [(<tuple>pairs[j])[1] for j in range(n)]
        try:
            packed = _Packer(use_bin_type=True, autoreset=True).pack(values)
        except Exception:  # noqa - the caller's one-by-one path names the pair
            return False
        values = None
        ks = <rh_key *>malloc(n * sizeof(rh_key))
        ibufs = <unsigned char *>malloc(n * 8)
        if ks == NULL or ibufs == NULL:
            free(ks)
            free(ibufs)
            raise MemoryError()
        try:
            for j in range(n):
                # A view into the key (or ibufs for an int), which pairs keeps alive.
                if key_view((<tuple>pairs[j])[0], &ks[j], ibufs + 8 * j, True):
                    return False
            p = <const unsigned char *>PyBytes_AS_STRING(packed)
            end = <size_t>PyBytes_GET_SIZE(packed)
            pos = 1 if n < 16 else (3 if n < 0x10000 else 5)  # the array's header
            for j in range(n):
                if rh_mp_skip(p + pos, end - pos, &used) != 0:
                    raise SystemError("msgpack's Packer wrote an array that does not parse")
                if used > RH_VALUE_MAX:
                    return False
                pos += used
            pos = 1 if n < 16 else (3 if n < 0x10000 else 5)
            for j in range(n):
                rh_mp_skip(p + pos, end - pos, &used)
                if rh_put(&self.kv, &ks[j], p + pos, used, 0) < 0:
                    raise MemoryError()
                pos += used
        finally:
            free(ks)
            free(ibufs)
        return True

    def _copy_prepare(self):
        """Memory for a checkpoint's copy, allocated and faulted in now,
        before the store's lock is taken (with room for some growth)."""
        cdef uint64_t need = self.kv.arena_len
        return _prepared_copy(need + need // 8 + (1 << 20))

    def _copy(self, prep=None):
        """A copy of the entries as they are now (an ArenaCopy): one memcpy
        of the arena into ``prep`` from ``_copy_prepare`` (or fresh memory
        when it is missing or too small). What a checkpoint snapshots."""
        cdef ArenaCopy out = prep if isinstance(prep, ArenaCopy) else None
        cdef int rc = 1
        if out is not None and out.kv.count == 0 and out.kv.arena_len <= 8:
            with nogil:
                rc = rh_arena_copy(&self.kv, &out.kv)
        if rc:
            out = _prepared_copy(self.kv.arena_len)
            with nogil:
                rc = rh_arena_copy(&self.kv, &out.kv)
            if rc:
                raise MemoryError()
        return out

    def _load_pairs(self, koff, kdata, voff, vdata, summed=True):
        """Put every pair of two Arrow-style binary columns: ``koff``/``voff``
        hold n+1 int32 offsets into ``kdata``/``vdata`` (any buffers); the
        pairs must be canonical key bytes and msgpack value bytes (a
        snapshot's columns). Returns the sum (mod 2^64) of the pairs' entry
        hashes (docs/FORMAT.md, "Digest"), so a loader can check a digest
        without a second walk; None with ``summed=False`` (a loader that sums
        them beside, with ``pairs_digest_sum``).

        Offsets that go back or past their data, or a malformed key, raise
        CorruptionError before anything is put, leaving the table as it was.
        A key that is already in the table, or comes twice, is
        CorruptionError too (a snapshot holds each key once), found while
        loading: the table is then emptied.
        """
        return self._load_views(memoryview(koff).cast("B").cast("i"), memoryview(kdata).cast("B"),
                                memoryview(voff).cast("B").cast("i"), memoryview(vdata).cast("B"),
                                summed)

    cdef _load_views(self, const int32_t[::1] koff, const unsigned char[::1] kdata,
                     const int32_t[::1] voff, const unsigned char[::1] vdata, bint summed):
        cdef Py_ssize_t n = koff.shape[0] - 1
        cdef Py_ssize_t i
        cdef int32_t a, b, c, d
        cdef rh_digest_acc acc
        cdef int rc
        cdef const unsigned char *kp = &kdata[0] if kdata.shape[0] else <const unsigned char *>b""
        cdef const unsigned char *vp = &vdata[0] if vdata.shape[0] else <const unsigned char *>b""
        if n < 0 or voff.shape[0] != n + 1:
            raise CorruptionError("key and value columns differ in length", reason="bad_snapshot")
        for i in range(n):
            a, b, c, d = koff[i], koff[i + 1], voff[i], voff[i + 1]
            if (a < 0 or b < a or b > kdata.shape[0] or c < 0 or d < c + 1
                    or d > vdata.shape[0]
                    or not rh_key_wellformed(kp + a if b > a else NULL, <size_t>(b - a))):
                raise CorruptionError(f"malformed pair {i} in a snapshot column",
                                      reason="bad_snapshot")
        rh_digest_acc_init(&acc)
        if n == 0:
            return 0 if summed else None
        with nogil:
            rc = rh_bulk_load(&self.kv, <uint64_t>n, &koff[0], kp, &voff[0], vp,
                              &acc if summed else NULL)
        if rc < 0:
            raise MemoryError()
        if rc == 1:
            raise CorruptionError("a snapshot holds the same key twice", reason="bad_snapshot")
        return rh_digest_acc_sum(&acc) if summed else None

    def _load_image(self, int fd, file_size, header):
        """Map a snapshot image (kvimage.h) as this empty table: the arena
        copy-on-write from the file ``fd`` (``file_size`` bytes, ``header``
        its first 4096), the slots rebuilt while every entry is checked.
        CorruptionError (reason bad_snapshot) names what is wrong; the table
        is then left empty."""
        cdef const unsigned char[::1] hv = memoryview(header).cast("B")
        cdef rh_img_header h
        cdef int rc
        cdef uint64_t size = file_size
        if self.kv.count or self.kv.arena != NULL or hv.shape[0] < RH_IMG_HEADER:
            raise ValueError("an image loads into an empty table, from its 4096-byte header")
        rc = rh_img_read_header(&hv[0], size, &h)
        if rc == 0:
            # No huge-page faults while loading (see rh_kv_end_bulk).
            self.kv.defer_huge = 1
            with nogil:
                rc = rh_img_map(&self.kv, fd, &h)
            rh_kv_end_bulk(&self.kv)
        if rc == -1:
            raise MemoryError()
        if rc:
            raise CorruptionError(_IMAGE_ERRORS.get(rc, f"image error {rc}"), reason="bad_snapshot")
        return self.kv.count

    def _delete_raw(self, kb):
        cdef rh_key k
        kb = _as_bytes(kb)
        _raw_key(kb, &k)
        return rh_delete(&self.kv, &k) == 1

    def _incr_raw(self, kb, delta):
        """Add ``delta`` in place; InvalidOperationError leaves the table as is."""
        cdef rh_key k
        cdef rh_num d, cur
        cdef int st
        cdef int64_t at
        kb = _as_bytes(kb)
        _raw_key(kb, &k)
        if fast_delta(delta, &d):
            st = rh_incr(&self.kv, &k, &d, &cur)
            if st < 0:
                raise MemoryError()
            if st != RH_INCR_OK:
                raise incr_error(st, &cur, delta)
            return _value_bytes(&self.kv, rh_find(&self.kv, &k))
        at = rh_find(&self.kv, &k)
        new = incr_value_generic(None if at < 0 else _value_bytes(&self.kv, at), delta)
        _put(&self.kv, &k, _as_bytes(new), RH_NUM_MAX_BYTES)
        return new

    def _clear(self):
        rh_clear(&self.kv)

    def _items_raw(self):
        cdef list out = []
        cdef uint64_t version = self.kv.version
        cdef int64_t i = rh_next_slot(&self.kv, 0)
        while i >= 0:
            item = (_key_bytes(&self.kv, i), _value_bytes(&self.kv, i))
            if self.kv.version != version:
                raise RuntimeError("table changed during iteration")
            out.append(item)
            i = rh_next_slot(&self.kv, <uint64_t>i + 1)
        return out

    def _reserve(self, keys, arena_bytes=0, bulk=False):
        """Make room for ``keys`` entries and ``arena_bytes`` of arena up front
        (a size hint from an earlier run; never shrinks the table).
        ``bulk``: a bulk load follows, faulted in without huge pages until
        ``_loaded()`` (see rh_kv_end_bulk)."""
        if keys < 0 or arena_bytes < 0:
            raise ValueError("reserve sizes must be >= 0")
        if bulk:
            self.kv.defer_huge = 1
        if rh_reserve(&self.kv, <uint64_t>keys, <uint64_t>arena_bytes) < 0:
            raise MemoryError()

    def _loaded(self):
        """The bulk load is over: later allocations get huge pages again."""
        rh_kv_end_bulk(&self.kv)

    def _digest(self):
        """The content digest (docs/FORMAT.md, "Digest"): a 64-bit int that
        depends only on the entries, not on the table's history.

        The walk keeps the GIL (about 25 ms for 1.8M keys): every writer of a
        table holds the GIL too, so no write can move the arena under the
        walk, whatever thread calls this.
        """
        cdef uint64_t out = 0
        cdef int rc = rh_kv_digest(&self.kv, &out)
        if rc < 0:
            # The arena and the count disagree: memory is damaged or kvcore
            # has a bug; a digest of it would be a lie.
            raise SystemError("KVTable arena holds a different number of live "
                              f"entries than its count ({self.kv.count})")
        return out

    # -- introspection for tests and benchmarks --------------------------
    def _stats(self):
        """Internal sizes: slots, count, arena bytes used / capacity / garbage."""
        return {
            "slots": (self.kv.mask + 1) if self.kv.slots != NULL else 0,
            "count": self.kv.count,
            "arena_len": self.kv.arena_len,
            "arena_cap": self.kv.arena_cap,
            "garbage": self.kv.garbage,
        }


cdef ArenaCopy _prepared_copy(uint64_t bytes):
    cdef ArenaCopy out = ArenaCopy.__new__(ArenaCopy)
    cdef int rc
    with nogil:
        rc = rh_arena_prepare(&out.kv, bytes)
    if rc < 0:
        raise MemoryError()
    return out


cdef class ArenaCopy:
    """A checkpoint's copy of one KVTable: its arena only (no slots), which
    is all the snapshot's columns and digest need."""

    cdef rh_kv kv

    def __cinit__(self):
        memset(&self.kv, 0, sizeof(rh_kv))

    def __dealloc__(self):
        rh_clear(&self.kv)

    def __len__(self):
        return self.kv.count

    def _digest(self):
        cdef uint64_t out = 0
        if rh_kv_digest(&self.kv, &out) < 0:
            raise SystemError("a table copy holds a different number of live entries "
                              f"than its count ({self.kv.count})")
        return out

    def _image(self):
        """The table's snapshot image (kvimage.h) as bytes: entries compacted
        and in home-slot order, so an open maps it and fills the slots front
        to back."""
        cdef uint64_t arena_len = 0, size
        cdef bytes out
        cdef unsigned char *p
        cdef int rc
        size = rh_img_size(&self.kv, &arena_len)
        out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>size)
        p = <unsigned char *>PyBytes_AS_STRING(out)
        with nogil:
            rc = rh_img_build(&self.kv, p, arena_len)
        if rc < 0:
            raise MemoryError()
        return out

    def _batch(self, long long start, Py_ssize_t max_rows):
        """Up to ``max_rows`` entries decoded, from the cursor ``start`` (0
        for the first): (keys, values, next cursor), the cursor -1 once no
        entry is left. Each entry comes once, in arena order; only this
        batch is decoded (a per-record migration's view, per_record.py).

        Container values are decoded as ``KVTable.to_dict`` does: the
        batch's, each checked to be exactly one msgpack object, laid end to
        end after an array header and given to one ``msgpack.unpackb``; one
        by one by ``unpack_value``'s own path should that raise. Scalars
        are decoded natively."""
        cdef uint64_t off = <uint64_t>start if start > 0 else 0
        cdef uint64_t peek
        cdef const rh_entry **ents
        cdef uint8_t *bulk
        cdef Py_ssize_t n = 0, nbulk = 0, j, b
        cdef uint64_t total = 0
        cdef rh_entry *e
        cdef unsigned char *p
        cdef bytes buf
        cdef list decoded = None, keys, values
        cdef bint more = True
        if start < 0 or max_rows < 1:
            raise ValueError("a batch starts at a cursor >= 0 and holds at least one row")
        if <uint64_t>max_rows > self.kv.count:
            max_rows = <Py_ssize_t>self.kv.count if self.kv.count else 1  # no more to hold
        ents = <const rh_entry **>malloc(max_rows * sizeof(rh_entry *))
        bulk = <uint8_t *>malloc(max_rows)
        if ents == NULL or bulk == NULL:
            free(ents)
            free(bulk)
            raise MemoryError()
        try:
            while n < max_rows:
                e = <rh_entry *>rh_arena_next(&self.kv, &off)
                if e == NULL:
                    more = False
                    break
                ents[n] = e
                bulk[n] = _bulk_decodable(e)
                if bulk[n]:
                    nbulk += 1
                    total += e.vlen
                n += 1
            if more:
                peek = off
                more = rh_arena_next(&self.kv, &peek) != NULL
            if nbulk > 1:
                buf = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(5 + total))
                p = _array32_header(<unsigned char *>PyBytes_AS_STRING(buf), nbulk)
                for j in range(n):
                    if bulk[j]:
                        e = <rh_entry *>ents[j]
                        memcpy(p, rh_entry_value(e), e.vlen)
                        p += e.vlen
                try:
                    decoded = _unpackb(buf)
                except Exception:  # noqa - one by one below: unpack_value's answer
                    decoded = None
                buf = None
                if decoded is not None and (type(decoded) is not list
                                            or len(decoded) != nbulk):
                    decoded = None
            keys = [None] * n
            values = [None] * n
            b = 0
            for j in range(n):
                e = <rh_entry *>ents[j]
                keys[j] = decode_key_ptr(rh_entry_key(e), e.klen)
                if decoded is not None and bulk[j]:
                    values[j] = decoded[b]
                    b += 1
                else:
                    values[j] = unpack_ptr(rh_entry_value(e), e.vlen)
        finally:
            free(ents)
            free(bulk)
        return keys, values, (<long long>off if more else -1)

    def _columns(self, max_rows=1 << 20, max_bytes=(1 << 31) - 1):
        """The entries as Arrow-style binary columns, in batches of at most
        ``max_rows`` pairs and ``max_bytes`` per data buffer (int32 offsets):
        a list of (n, key offsets, key data, value offsets, value data), the
        offsets n+1 native int32 each, every buffer a bytes object."""
        cdef list out = []
        cdef uint64_t off = 0, start, kbytes, vbytes, rows
        cdef uint64_t cap_rows = max_rows, cap_bytes = max_bytes
        cdef const rh_entry *e
        cdef bytes koff, kdata, voff, vdata
        cdef int32_t *ko
        cdef int32_t *vo
        cdef unsigned char *kd
        cdef unsigned char *vd
        cdef uint64_t i
        if cap_rows < 1 or cap_bytes < RH_VALUE_MAX:
            raise ValueError("batches must hold at least one pair of any size")
        while True:
            # Pass 1: how many pairs, and how many bytes, fit in this batch.
            start = off
            rows = kbytes = vbytes = 0
            while rows < cap_rows:
                i = off
                e = rh_arena_next(&self.kv, &off)
                if e == NULL:
                    break
                if rows and (kbytes + e.klen > cap_bytes or vbytes + e.vlen > cap_bytes):
                    off = i  # starts the next batch
                    break
                rows += 1
                kbytes += e.klen
                vbytes += e.vlen
            if rows == 0:
                break
            koff = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(4 * (rows + 1)))
            voff = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(4 * (rows + 1)))
            kdata = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>kbytes)
            vdata = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>vbytes)
            ko, vo = <int32_t *>PyBytes_AS_STRING(koff), <int32_t *>PyBytes_AS_STRING(voff)
            kd, vd = <unsigned char *>PyBytes_AS_STRING(kdata), <unsigned char *>PyBytes_AS_STRING(vdata)
            # Pass 2: fill them. Offsets are native int32, as Arrow lays them out
            # (its schema records the byte order; our reader refuses a foreign one).
            with nogil:
                kbytes = vbytes = 0
                ko[0] = vo[0] = 0
                for i in range(rows):
                    e = rh_arena_next(&self.kv, &start)
                    memcpy(kd + kbytes, <const unsigned char *>(e + 1), e.klen)
                    memcpy(vd + vbytes, <const unsigned char *>(e + 1) + e.klen, e.vlen)
                    kbytes += e.klen
                    vbytes += e.vlen
                    ko[i + 1] = <int32_t>kbytes
                    vo[i + 1] = <int32_t>vbytes
            out.append((rows, koff, kdata, voff, vdata))
        return out


_IMAGE_ERRORS = {
    1: "image header is not one (magic, version or sizes)",
    2: "image entry is malformed",
    3: "image entries are out of home-slot order",
    4: "image holds the same key twice",
    5: "image holds another number of entries than its header says",
    6: "image could not be mapped",
}


def image_digest_sum(data):
    """The entry-hash sum (mod 2^64) of a snapshot image held in ``data``
    (the whole file), or None when its header or an entry is malformed.
    Safe on unchecked bytes; runs without the GIL (beside the loading thread)."""
    cdef const unsigned char[::1] v = memoryview(data).cast("B")
    cdef rh_img_header h
    cdef uint64_t total = 0
    cdef int rc
    if v.shape[0] < RH_IMG_HEADER or rh_img_read_header(&v[0], <uint64_t>v.shape[0], &h):
        return None
    with nogil:
        rc = rh_img_digest_sum(&v[0] + RH_IMG_HEADER, h.arena_len, h.count, &total)
    return None if rc else total


def pairs_digest_sum(koff, kdata, voff, vdata):
    """The sum (mod 2^64) of the entry hashes (docs/FORMAT.md, "Digest") of
    the pairs of two Arrow-style binary columns, or None when an offset is
    out of order or bounds. Safe on unchecked columns, and runs without the
    GIL, so a snapshot loader sums beside the thread that loads."""
    return _pairs_sum_views(memoryview(koff).cast("B").cast("i"), memoryview(kdata).cast("B"),
                            memoryview(voff).cast("B").cast("i"), memoryview(vdata).cast("B"))


cdef object _pairs_sum_views(const int32_t[::1] koff, const unsigned char[::1] kdata,
                             const int32_t[::1] voff, const unsigned char[::1] vdata):
    cdef Py_ssize_t n = koff.shape[0] - 1
    cdef uint64_t total = 0
    cdef int rc = 0
    cdef const unsigned char *kp = &kdata[0] if kdata.shape[0] else <const unsigned char *>b""
    cdef const unsigned char *vp = &vdata[0] if vdata.shape[0] else <const unsigned char *>b""
    if n < 0 or voff.shape[0] != n + 1:
        return None
    if n:
        with nogil:
            rc = rh_pairs_digest_sum(<uint64_t>n, &koff[0], kp, <uint64_t>kdata.shape[0],
                                     &voff[0], vp, <uint64_t>vdata.shape[0], &total)
    return None if rc < 0 else total


def _xxh64(data, seed=0):
    """XXH64 of a bytes-like object by xxh64.h (tests compare it with the
    ``xxhash`` package, which the pure twin uses)."""
    cdef const unsigned char[::1] mv = memoryview(data).cast("B")
    cdef uint64_t s = seed
    cdef size_t n = <size_t>mv.shape[0]
    cdef const unsigned char *p = &mv[0] if n else NULL
    with nogil:
        s = rh_xxh64(p, n, s)
    return s


def _xxh64_parts(parts, seed=0):
    """XXH64 of the concatenation of ``parts``, fed piece by piece through
    the streaming state (tests: every split must give the one-shot value)."""
    cdef rh_xxh64_state st
    cdef const unsigned char[::1] mv
    rh_xxh64_reset(&st, <uint64_t>seed)
    for part in parts:
        mv = memoryview(part).cast("B")
        if mv.shape[0]:
            rh_xxh64_update(&st, &mv[0], <size_t>mv.shape[0])
    return rh_xxh64_digest(&st)


def _xxh64_x4(a, b, c, d, seed=0):
    """XXH64 of four bytes objects by the interleaved form the digest uses
    (tests: it must equal four one-shot hashes, whatever the four lengths)."""
    cdef const unsigned char *p[4]
    cdef size_t n[4]
    cdef uint64_t out[4]
    cdef int j
    cdef bytes x
    cdef tuple parts = (_as_bytes(a), _as_bytes(b), _as_bytes(c), _as_bytes(d))
    for j in range(4):
        x = parts[j]
        p[j] = <const unsigned char *>PyBytes_AS_STRING(x)
        n[j] = <size_t>PyBytes_GET_SIZE(x)
    rh_xxh64_x4(p, n, <uint64_t>seed, out)
    return (out[0], out[1], out[2], out[3])


def _rebuild(items):
    cdef KVTable t = KVTable()
    for kb, vb in items:
        t._put_raw(kb, vb)
    return t


Mapping.register(KVTable)
