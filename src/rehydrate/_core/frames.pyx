# cython: language_level=3
"""Records and frames: the writer's buffer and the replay scanner (native).

Twin of ``rehydrate._pure.frames``: same names, same bytes, same ScanResult
for the same input. A *record* is one logical op with one LSN; a *frame* is
the physical unit on disk (header + checksummed payload) and the unit of
atomicity.

scan_frames is the hot loop. Per frame it checks the header, then, without
the GIL, the CRC, the LSN order, LZ4 and the structure of every record (into
a C array of descriptors, keys already hashed); only a frame that passes all
of that is applied, with the GIL held because the tables are Python objects.
"""

import struct

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

from ._format cimport (
    CODEC_LZ4, CODEC_NONE, DECL_KIND_MASK, DECL_VERSION_FLAG, FLAG_OFFSETS,
    FORMAT_VERSION, FRAME_HEADER_BYTES, FRAME_HEADER_BYTES_V1, FRAME_HEADER_CRC_SPAN,
    FRAME_MAGIC, FRAME_MAGIC_V1, KIND_CUSTOM, KIND_DICT, KIND_KV, KIND_NUMERIC,
    KNOWN_FLAGS, MAX_FRAME_PAYLOAD_BYTES, MAX_TABLE_ID, MAX_TABLE_VERSION,
    MIN_RECORD_BYTES, OP_CLEAR,
    OP_CUSTOM, OP_DELETE, OP_INCR, OP_NOOP, OP_PUT, SCAN_APPLY_ERROR, SCAN_BAD_CRC, SCAN_BAD_HEADER, SCAN_BAD_MAGIC,
    SCAN_BAD_PAYLOAD, SCAN_CANCELLED, SCAN_LSN_GAP, SCAN_LSN_OVERLAP, SCAN_OK,
    SCAN_TRUNCATED,
)
from .includes.rh_compiler cimport RH_PREFETCH
from .includes.kvcore cimport (
    rh_clear, rh_delete, rh_entry, rh_find, rh_incr, rh_key, rh_key_from_bytes, rh_kv,
    rh_put, rh_slot,
)
from .includes.lz4_decode cimport RH_LZ4_SLACK
from .includes.numcore cimport rh_num_apply_run, rh_numtab
from .includes.payload cimport (
    RH_P_CANCELLED, RH_P_COUNT, RH_P_DECL, RH_P_DECL_COUNT, RH_P_DECL_NAME, RH_P_KEY_LEN,
    RH_P_MALFORMED, RH_P_NOMEM, RH_P_OFFSETS_COUNT, RH_P_OK, RH_P_TOO_MANY,
    RH_P_UNDECLARED, RH_P_UNKNOWN_OP, RH_P_VALUE_LEN, RH_TID_SPACE, rh_decl,
    rh_decode_payload, rh_decoded, rh_decoded_free, rh_rec, rh_skip_offsets,
)
from .includes.rhbuf cimport (
    rh_buf, rh_buf_free, rh_buf_put_byte, rh_buf_put_bytes, rh_buf_put_varint,
    rh_buf_reserve, rh_varint_len,
)
from .includes.valcodec cimport (
    RH_INCR_OK, RH_NUM_MAX_BYTES, rh_decode_number, rh_num, rh_pack_num,
)
from .codec cimport (
    crc32c_raw, delta_num, incr_error, key_bytes, key_view, lz4_decode_raw, lz4_reason,
    num_to_py, pack_into,
)
from .kvtable cimport KVTable

from rehydrate import _format as F
from rehydrate._custom import apply_custom
from rehydrate._offsets import encode_offsets, split_offsets
from rehydrate._core.codec import crc32c, encode_key, encode_varint, lz4_compress, pack_value
from rehydrate.errors import (
    BatchTooLargeError,
    ConfigError,
    InvalidOperationError,
    RehydrateError,
)

_FRAME_HEADER = struct.Struct("<IIQIIIBBH")  # the fields both formats share

# A batch's records must fit one frame with room for every table declaration:
# 65536 of at most 266 bytes (id 3, kind 1, name 2 + 255, version 5) take
# under 17 MiB of the other half (a numeric table's schema comes on top).
MAX_BATCH_RECORD_BYTES = F.MAX_FRAME_PAYLOAD_BYTES // 2

cdef enum:
    C_MAX_BATCH_RECORD_BYTES = MAX_FRAME_PAYLOAD_BYTES // 2
    # Replay prefetches the home slot this many records ahead, and the entry
    # that slot points to half as far ahead (by then the slot is in cache).
    PREFETCH_SLOTS = 16
    PREFETCH_ENTRIES = 8
    # Everything but a record's key and value: op, 3 varints of <= 10 bytes.
    RECORD_OVERHEAD = 31


# ---------------------------------------------------------------- helpers

cdef inline uint32_t _le32(const unsigned char *p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint64_t _le64(const unsigned char *p) noexcept nogil:
    return (<uint64_t>_le32(p)) | ((<uint64_t>_le32(p + 4)) << 32)


cdef inline void _put_le32(unsigned char *p, uint32_t v) noexcept nogil:
    p[0] = <unsigned char>v
    p[1] = <unsigned char>(v >> 8)
    p[2] = <unsigned char>(v >> 16)
    p[3] = <unsigned char>(v >> 24)


cdef inline Py_ssize_t _tid_fast(object tid, unsigned char *out) except -2:
    """Varint of a table id into out (<= 10 bytes), or -1 for the slow path."""
    cdef int overflow = 0
    cdef long long v
    cdef uint64_t u
    cdef Py_ssize_t n = 0
    if type(tid) is not int:
        return -1
    v = PyLong_AsLongLongAndOverflow(tid, &overflow)
    if overflow or v < 0:
        return -1
    u = <uint64_t>v
    while u >= 0x80:
        out[n] = <unsigned char>(u | 0x80)
        u >>= 7
        n += 1
    out[n] = <unsigned char>u
    return n + 1


cdef inline bytes _tid_bytes(object tid):
    # The twin's encode_varint, for its exact bytes or its exact error; called
    # before any table changes (the twin changes the table first; see report).
    cdef unsigned char buf[16]
    cdef Py_ssize_t n = _tid_fast(tid, buf)
    if n < 0:
        return encode_varint(tid)
    return PyBytes_FromStringAndSize(<const char *>buf, n)


cdef inline void _key_of_record(rh_key *k, const unsigned char *kb, uint32_t klen, uint64_t h) noexcept nogil:
    # Record keys are well formed (at least the tag byte), checked at decode.
    k.tag = kb[0]
    k.body = kb + 1
    k.len = klen - 1
    k.hash = h


cdef int _append_record(rh_buf *out, unsigned op, const unsigned char *tid, Py_ssize_t tidlen,
                        const rh_key *k, const unsigned char *v, size_t vlen) except -1:
    cdef size_t klen = 0 if k == NULL else k.len + 1
    if rh_buf_reserve(out, RECORD_OVERHEAD + <size_t>tidlen + klen + vlen) < 0:
        raise MemoryError()
    rh_buf_put_byte(out, <unsigned char>op)
    rh_buf_put_bytes(out, tid, <size_t>tidlen)
    rh_buf_put_varint(out, klen)
    if klen:
        rh_buf_put_byte(out, <unsigned char>k.tag)
        rh_buf_put_bytes(out, k.body, k.len)
    rh_buf_put_varint(out, vlen)
    rh_buf_put_bytes(out, v, vlen)
    return 0


def check_table_name(name):
    """UTF-8 bytes of a valid table name (1..255 bytes of str); ConfigError else."""
    if type(name) is not str:
        raise ConfigError(f"table names are str, not {type(name).__name__}")
    nb = name.encode("utf-8")
    if not 1 <= len(nb) <= F.MAX_TABLE_NAME_BYTES:
        raise ConfigError(f"table name must be 1..{F.MAX_TABLE_NAME_BYTES} bytes")
    return nb


# ---------------------------------------------------------------- Staging

cdef class Staging:
    """The records of one ``store.batch()``, encoded and checked as they come.

    Type errors (key, value, delta) raise at the call; whether an ``incr``
    applies is known only at commit, against the state plus the batch so far.
    Records are kept as C descriptors over one byte buffer, keys pre-hashed.
    """

    def __cinit__(self):
        self.names = []
        self._index = {}
        self.ops = NULL
        self.nops = self.ops_cap = 0
        memset(&self.data, 0, sizeof(rh_buf))
        self.nbytes = 0

    def __dealloc__(self):
        free(self.ops)
        rh_buf_free(&self.data)

    def __len__(self):
        return self.nops

    cdef Py_ssize_t _li(self, object table_name) except -1:
        li = self._index.get(table_name)
        if li is None:
            check_table_name(table_name)
            li = len(self.names)
            self._index[table_name] = li
            self.names.append(table_name)
        return li

    cdef rh_staged *_new_op(self) except NULL:
        cdef size_t cap
        cdef rh_staged *p
        if self.nops == self.ops_cap:
            cap = self.ops_cap * 2 if self.ops_cap else 64
            p = <rh_staged *>realloc(self.ops, cap * sizeof(rh_staged))
            if p == NULL:
                raise MemoryError()
            self.ops = p
            self.ops_cap = cap
        return &self.ops[self.nops]

    cdef int _key_into_data(self, const rh_key *k, rh_staged *op) except -1:
        if rh_buf_reserve(&self.data, k.len + 1) < 0:
            raise MemoryError()
        op.koff = self.data.len
        op.klen = <uint32_t>(k.len + 1)
        op.hash = k.hash
        rh_buf_put_byte(&self.data, <unsigned char>k.tag)
        rh_buf_put_bytes(&self.data, k.body, k.len)
        return 0

    def put(self, table_name, key, value):
        cdef rh_key k
        cdef unsigned char ibuf[8]
        cdef rh_staged op
        cdef size_t mark = self.data.len
        key_view(key, &k, ibuf, False)
        try:
            self._key_into_data(&k, &op)
            op.voff = self.data.len
            pack_into(value, &self.data)
            op.vlen = <uint32_t>(self.data.len - op.voff)
            op.li = <uint32_t>self._li(table_name)
        except BaseException:
            self.data.len = mark  # nothing of a refused record stays
            raise
        op.op = OP_PUT
        self._new_op()[0] = op
        self.nops += 1
        self.nbytes += op.klen + op.vlen + 16

    def delete(self, table_name, key):
        cdef rh_key k
        cdef unsigned char ibuf[8]
        cdef rh_staged op
        cdef size_t mark = self.data.len
        key_view(key, &k, ibuf, False)
        try:
            self._key_into_data(&k, &op)
            op.voff = self.data.len
            op.vlen = 0
            op.li = <uint32_t>self._li(table_name)
        except BaseException:
            self.data.len = mark
            raise
        op.op = OP_DELETE
        self._new_op()[0] = op
        self.nops += 1
        self.nbytes += op.klen + 16

    def incr(self, table_name, key, delta=1):
        cdef rh_key k
        cdef unsigned char ibuf[8]
        cdef rh_staged op
        cdef size_t mark = self.data.len
        key_view(key, &k, ibuf, False)
        delta_num(delta, &op.delta)
        try:
            self._key_into_data(&k, &op)
            if rh_buf_reserve(&self.data, RH_NUM_MAX_BYTES) < 0:
                raise MemoryError()
            op.voff = self.data.len
            op.vlen = <uint32_t>rh_pack_num(&op.delta, self.data.data + self.data.len)
            self.data.len += op.vlen
            op.li = <uint32_t>self._li(table_name)
        except BaseException:
            self.data.len = mark
            raise
        op.op = OP_INCR
        self._new_op()[0] = op
        self.nops += 1
        self.nbytes += op.klen + op.vlen + 16

    def clear(self, table_name):
        cdef rh_staged op
        op.li = <uint32_t>self._li(table_name)
        op.op = OP_CLEAR
        op.koff = op.voff = self.data.len
        op.klen = op.vlen = 0
        op.hash = 0
        self._new_op()[0] = op
        self.nops += 1
        self.nbytes += 16


# ---------------------------------------------------------------- LogBuffer

cdef enum:
    UNDO_KEY = 1     # native table, one key: old value in the undo buffer (or absent)
    UNDO_CLEAR = 2   # native table cleared: its old items in a Python list
    UNDO_PY = 3      # any other table: the twin's (table, key, old) tuple


cdef class LogBuffer:
    """Records appended since the last frame was cut, with LSN assignment.

    Each write method validates, applies to the table, appends the record and
    returns its LSN; on any error nothing is applied or appended. The caller
    (the store) serializes calls.
    """

    def __cinit__(self, next_lsn):
        self._next_lsn = next_lsn
        self._first_lsn = next_lsn
        memset(&self.parts, 0, sizeof(rh_buf))
        memset(&self.scratch, 0, sizeof(rh_buf))
        self._used = set()
        self._last_tid = None

    def __dealloc__(self):
        rh_buf_free(&self.parts)
        rh_buf_free(&self.scratch)

    @property
    def next_lsn(self):
        return self._next_lsn

    @next_lsn.setter
    def next_lsn(self, value):
        self._next_lsn = value

    @property
    def pending_records(self):
        return self._next_lsn - self._first_lsn

    @property
    def pending_bytes(self):
        return self.parts.len

    cdef int _note_tid(self, object tid) except -1:
        # The tables pending records use, for the frame's declarations. The
        # store passes the same int object per table, so the identity test
        # skips the set for runs of writes to one table.
        if tid is not self._last_tid:
            self._used.add(tid)
            self._last_tid = tid
        return 0

    def used_tids(self):
        """Sorted ids of the tables the pending records use."""
        return sorted(self._used)

    cdef int64_t _advance(self) noexcept:
        cdef int64_t lsn = self._next_lsn
        self._next_lsn = lsn + 1
        return lsn

    def put(self, table, tid, key, value):
        cdef rh_key k
        cdef unsigned char ibuf[8]
        cdef unsigned char tbuf[16]
        cdef const unsigned char *tp = tbuf
        cdef Py_ssize_t tl
        cdef size_t vlen
        cdef bytes tb, vb
        key_view(key, &k, ibuf, False)
        self.scratch.len = 0
        pack_into(value, &self.scratch)
        vlen = self.scratch.len
        if vlen > C_MAX_BATCH_RECORD_BYTES:
            raise BatchTooLargeError(f"value of {vlen} bytes exceeds one frame")
        tl = _tid_fast(tid, tbuf)
        if tl < 0:
            tb = _tid_bytes(tid)
            tp = <const unsigned char *>PyBytes_AS_STRING(tb)
            tl = PyBytes_GET_SIZE(tb)
        if type(table) is KVTable:
            if rh_put(&(<KVTable>table).kv, &k, self.scratch.data, vlen, 0) < 0:
                raise MemoryError()
            _append_record(&self.parts, OP_PUT, tp, tl, &k, self.scratch.data, vlen)
        else:
            # Python code runs in _put_raw; keep our own copy of the value.
            vb = PyBytes_FromStringAndSize(<const char *>self.scratch.data, <Py_ssize_t>vlen)
            table._put_raw(key_bytes(&k), vb)
            _append_record(&self.parts, OP_PUT, tp, tl, &k,
                           <const unsigned char *>PyBytes_AS_STRING(vb), vlen)
        self._note_tid(tid)
        return self._advance()

    def delete(self, table, tid, key):
        cdef rh_key k
        cdef unsigned char ibuf[8]
        cdef unsigned char tbuf[16]
        cdef const unsigned char *tp = tbuf
        cdef Py_ssize_t tl
        cdef bytes tb
        key_view(key, &k, ibuf, False)
        tl = _tid_fast(tid, tbuf)
        if tl < 0:
            tb = _tid_bytes(tid)
            tp = <const unsigned char *>PyBytes_AS_STRING(tb)
            tl = PyBytes_GET_SIZE(tb)
        if type(table) is KVTable:
            rh_delete(&(<KVTable>table).kv, &k)
        else:
            table._delete_raw(key_bytes(&k))
        _append_record(&self.parts, OP_DELETE, tp, tl, &k, NULL, 0)
        self._note_tid(tid)
        return self._advance()

    def incr(self, table, tid, key, delta):
        cdef rh_key k
        cdef unsigned char ibuf[8]
        cdef unsigned char tbuf[16]
        cdef unsigned char dbuf[16]
        cdef const unsigned char *tp = tbuf
        cdef Py_ssize_t tl
        cdef size_t dlen
        cdef bytes tb
        cdef rh_num d, cur
        cdef int st
        key_view(key, &k, ibuf, False)
        delta_num(delta, &d)
        tl = _tid_fast(tid, tbuf)
        if tl < 0:
            tb = _tid_bytes(tid)
            tp = <const unsigned char *>PyBytes_AS_STRING(tb)
            tl = PyBytes_GET_SIZE(tb)
        if type(table) is KVTable:
            st = rh_incr(&(<KVTable>table).kv, &k, &d, &cur)
            if st < 0:
                raise MemoryError()
            if st != RH_INCR_OK:
                raise incr_error(st, &cur, delta)
        else:
            table._incr_raw(key_bytes(&k), delta)
        dlen = rh_pack_num(&d, dbuf)
        _append_record(&self.parts, OP_INCR, tp, tl, &k, dbuf, dlen)
        self._note_tid(tid)
        return self._advance()

    def clear(self, table, tid):
        cdef unsigned char tbuf[16]
        cdef const unsigned char *tp = tbuf
        cdef Py_ssize_t tl
        cdef bytes tb
        tl = _tid_fast(tid, tbuf)
        if tl < 0:
            tb = _tid_bytes(tid)
            tp = <const unsigned char *>PyBytes_AS_STRING(tb)
            tl = PyBytes_GET_SIZE(tb)
        if type(table) is KVTable:
            rh_clear(&(<KVTable>table).kv)
        else:
            table._clear()
        _append_record(&self.parts, OP_CLEAR, tp, tl, NULL, NULL, 0)
        self._note_tid(tid)
        return self._advance()

    def custom(self, table, tid, key, op, value):
        """A custom table's own op (record op 6, value msgpack [op, value]);
        ``key`` may be None. The table applies it first: an error logs nothing."""
        cdef rh_key k
        cdef bytes tb = _tid_bytes(tid)
        kb = encode_key(key) if key is not None else b""
        vb = pack_value([op, value])
        apply_custom(table, kb, vb)
        if len(kb):
            rh_key_from_bytes(&k, <const unsigned char *>PyBytes_AS_STRING(kb), len(kb))
        _append_record(&self.parts, OP_CUSTOM, <const unsigned char *>PyBytes_AS_STRING(tb),
                       PyBytes_GET_SIZE(tb), &k if len(kb) else NULL,
                       <const unsigned char *>PyBytes_AS_STRING(vb), len(vb))
        self._note_tid(tid)
        return self._advance()

    def noop(self):
        """A record that changes nothing: the LSN of a batch that only
        carries source offsets. Uses no table, so declares none."""
        cdef unsigned char tid0 = 0
        _append_record(&self.parts, OP_NOOP, &tid0, 1, NULL, NULL, 0)
        return self._advance()

    def commit(self, Staging staging not None, tables, tids):
        """Apply and append a staged batch; all of it or, on error, none of it.

        ``tables[i]`` and ``tids[i]`` belong to ``staging.names[i]``. Returns
        the batch's last LSN, or None for an empty batch.
        """
        cdef size_t nops = staging.nops
        cdef Py_ssize_t nt, li
        cdef size_t j, n_undo = 0, total
        cdef rh_kv **kvs = NULL
        cdef rh_undo *undo = NULL
        cdef rh_buf oldvals
        cdef rh_staged *op
        cdef rh_staged *ahead
        cdef rh_kv *kv
        cdef rh_key k
        cdef rh_num cur
        cdef int64_t at
        cdef int st
        cdef rh_entry *e
        cdef list py_undo = []
        cdef const unsigned char *data
        if nops == 0:
            return None
        if staging.nbytes > C_MAX_BATCH_RECORD_BYTES:
            raise BatchTooLargeError(
                f"batch of {staging.nbytes} bytes exceeds {MAX_BATCH_RECORD_BYTES}"
            )
        nt = len(staging.names)
        # Resolve every table and table id before changing anything, so a bad
        # index or id raises with the state untouched.
        tabs = [tables[li] for li in range(nt)]
        tid_enc = [_tid_bytes(tids[li]) for li in range(nt)]
        memset(&oldvals, 0, sizeof(rh_buf))
        kvs = <rh_kv **>calloc(<size_t>nt + 1, sizeof(rh_kv *))
        undo = <rh_undo *>calloc(nops, sizeof(rh_undo))
        if kvs == NULL or undo == NULL:
            free(kvs)
            free(undo)
            raise MemoryError()
        try:
            for li in range(nt):
                t = tabs[li]
                if type(t) is KVTable:
                    kvs[li] = &(<KVTable>t).kv
            data = staging.data.data
            try:
                for j in range(nops):
                    op = &staging.ops[j]
                    if j + PREFETCH_SLOTS < nops:
                        ahead = &staging.ops[j + PREFETCH_SLOTS]
                        kv = kvs[ahead.li]
                        if kv != NULL and kv.slots != NULL and ahead.op != OP_CLEAR:
                            RH_PREFETCH(&kv.slots[ahead.hash & kv.mask])
                    kv = kvs[op.li]
                    undo[n_undo].op_index = j
                    if kv == NULL:
                        # _commit_py saves its undo entry before applying; the
                        # entry counts even when the op then fails, so the
                        # rollback pairs every saved entry with its op.
                        py_before = len(py_undo)
                        try:
                            self._commit_py(op, tabs[op.li], data, py_undo)
                        finally:
                            if len(py_undo) > py_before:
                                undo[n_undo].kind = UNDO_PY
                                n_undo += 1
                        continue
                    if op.op == OP_CLEAR:
                        py_undo.append((<KVTable>tabs[op.li])._items_raw())
                        undo[n_undo].kind = UNDO_CLEAR
                        undo[n_undo].py_index = len(py_undo) - 1
                        rh_clear(kv)
                        n_undo += 1
                        continue
                    _key_of_record(&k, data + op.koff, op.klen, op.hash)
                    at = rh_find(kv, &k)
                    undo[n_undo].kind = UNDO_KEY
                    undo[n_undo].had_old = at >= 0
                    if at >= 0:
                        e = <rh_entry *>(kv.arena + kv.slots[at].off)
                        if rh_buf_reserve(&oldvals, e.vlen) < 0:
                            raise MemoryError()
                        undo[n_undo].old_off = oldvals.len
                        undo[n_undo].old_len = e.vlen
                        rh_buf_put_bytes(&oldvals, <const unsigned char *>(e + 1) + e.klen, e.vlen)
                    if op.op == OP_PUT:
                        if rh_put(kv, &k, data + op.voff, op.vlen, 0) < 0:
                            raise MemoryError()
                    elif op.op == OP_DELETE:
                        rh_delete(kv, &k)
                    else:
                        st = rh_incr(kv, &k, &op.delta, &cur)
                        if st < 0:
                            raise MemoryError()
                        if st != RH_INCR_OK:
                            raise incr_error(st, &cur, num_to_py(&op.delta))
                    n_undo += 1
            except BaseException:
                # All or nothing: undo in reverse order. (The twin undoes only
                # on InvalidOperationError; any failure undoes here.)
                self._rollback(staging, tabs, kvs, undo, n_undo, &oldvals, py_undo)
                raise
            # Applied: now append every record (cannot fail but for memory,
            # which we reserve up front).
            total = 0
            for j in range(nops):
                op = &staging.ops[j]
                total += RECORD_OVERHEAD + PyBytes_GET_SIZE(tid_enc[op.li]) + op.klen + op.vlen
            if rh_buf_reserve(&self.parts, total) < 0:
                self._rollback(staging, tabs, kvs, undo, n_undo, &oldvals, py_undo)
                raise MemoryError()
            for j in range(nops):
                op = &staging.ops[j]
                tb = tid_enc[op.li]
                rh_buf_put_byte(&self.parts, <unsigned char>op.op)
                rh_buf_put_bytes(&self.parts, PyBytes_AS_STRING(tb), PyBytes_GET_SIZE(tb))
                rh_buf_put_varint(&self.parts, op.klen)
                rh_buf_put_bytes(&self.parts, data + op.koff, op.klen)
                rh_buf_put_varint(&self.parts, op.vlen)
                rh_buf_put_bytes(&self.parts, data + op.voff, op.vlen)
            self._next_lsn += <int64_t>nops
            for li in range(nt):
                self._used.add(tids[li])
            self._last_tid = None
            return self._next_lsn - 1
        finally:
            free(kvs)
            free(undo)
            rh_buf_free(&oldvals)

    cdef int _commit_py(self, rh_staged *op, object t, const unsigned char *data,
                        list py_undo) except -1:
        # A table that is not a native KVTable: the twin's calls, in its order.
        if op.op == OP_CLEAR:
            py_undo.append((t, None, t._items_raw()))
            t._clear()
            return 0
        kb = PyBytes_FromStringAndSize(<const char *>data + op.koff, op.klen)
        py_undo.append((t, kb, t._get_raw(kb)))
        if op.op == OP_PUT:
            t._put_raw(kb, PyBytes_FromStringAndSize(<const char *>data + op.voff, op.vlen))
        elif op.op == OP_DELETE:
            t._delete_raw(kb)
        else:
            t._incr_raw(kb, num_to_py(&op.delta))
        return 0

    cdef void _rollback(self, Staging staging, list tabs, rh_kv **kvs, rh_undo *undo,
                        size_t n_undo, rh_buf *oldvals, list py_undo) noexcept:
        cdef size_t j
        cdef rh_staged *op
        cdef rh_key k
        cdef rh_kv *kv
        cdef Py_ssize_t pi = len(py_undo)
        cdef const unsigned char *data = staging.data.data
        while n_undo > 0:
            n_undo -= 1
            op = &staging.ops[undo[n_undo].op_index]
            try:
                if undo[n_undo].kind == UNDO_PY:
                    pi -= 1
                    t, kb, old = py_undo[pi]
                    if kb is None:
                        for k2, v2 in old:
                            t._put_raw(k2, v2)
                    elif old is None:
                        t._delete_raw(kb)
                    else:
                        t._put_raw(kb, old)
                elif undo[n_undo].kind == UNDO_CLEAR:
                    pi -= 1
                    t = tabs[op.li]
                    for k2, v2 in py_undo[pi]:
                        t._put_raw(k2, v2)
                else:
                    kv = kvs[op.li]
                    _key_of_record(&k, data + op.koff, op.klen, op.hash)
                    if undo[n_undo].had_old:
                        rh_put(kv, &k, oldvals.data + undo[n_undo].old_off,
                               undo[n_undo].old_len, 0)
                    else:
                        rh_delete(kv, &k)
            except BaseException:
                pass  # best effort; the original error is what the caller sees

    def take(self):
        """(first_lsn, count, records) of everything pending; then empty."""
        out = (self._first_lsn, self._next_lsn - self._first_lsn,
               PyBytes_FromStringAndSize(<const char *>self.parts.data, <Py_ssize_t>self.parts.len))
        self._first_lsn = self._next_lsn
        self._used = set()
        self._last_tid = None
        self.parts.len = 0
        if self.parts.cap > (16 << 20):
            rh_buf_free(&self.parts)  # one huge batch should not pin its buffer
        return out


# ---------------------------------------------------------------- frames

def encode_frame(first_lsn, count, decls, records, offsets=None, version=FORMAT_VERSION):
    """One frame: header + payload (offsets, decls, then records), LZ4 when it pays.

    ``decls`` is a sequence of (table_id, kind, name_bytes[, schema_bytes
    [, version]]) (the schema of a numeric table, ignored for other kinds; the
    table's version, 1 when absent, written only when >= 2); ``offsets`` a
    dict {source: int64} stored with the frame (FLAG_OFFSETS), or None.
    ``version``: the segment format the frame goes into (1 only to make
    format-1 test data; rehydrate writes format 2).
    """
    cdef bytes payload, out
    cdef Py_ssize_t hb = _header_bytes_of(version)
    cdef Py_ssize_t raw_len, stored_len
    cdef unsigned codec = CODEC_NONE
    cdef unsigned flags = FLAG_OFFSETS if offsets else 0
    cdef unsigned char *p
    cdef uint32_t crc
    pieces = [encode_offsets(offsets)] if offsets else []
    pieces.append(encode_varint(len(decls)))
    for decl in decls:
        tid, kind, name = decl[0], decl[1], decl[2]
        table_version = decl[4] if len(decl) > 4 else 1
        if not 0 <= kind <= DECL_KIND_MASK:
            raise ValueError(f"table kind must be 0..{DECL_KIND_MASK}")
        if type(table_version) is not int or not 1 <= table_version <= MAX_TABLE_VERSION:
            raise ValueError("table version must be an int in 1..4294967295")
        flag = DECL_VERSION_FLAG if table_version > 1 else 0
        pieces.append(encode_varint(tid))
        pieces.append(bytes((kind | flag,)))
        pieces.append(encode_varint(len(name)))
        pieces.append(name)
        if kind == KIND_NUMERIC:
            schema = decl[3] if len(decl) > 3 else b""
            pieces.append(encode_varint(len(schema)))
            pieces.append(schema)
        if flag:
            pieces.append(encode_varint(table_version))
    pieces.append(records)
    payload = b"".join(pieces)
    raw_len = PyBytes_GET_SIZE(payload)
    if raw_len > MAX_FRAME_PAYLOAD_BYTES:
        raise BatchTooLargeError(f"frame payload of {raw_len} bytes exceeds the cap")
    if raw_len >= F.COMPRESS_MIN_BYTES:
        packed = lz4_compress(payload)
        if len(packed) <= raw_len - raw_len // 8:
            payload = packed
            codec = CODEC_LZ4
    stored_len = PyBytes_GET_SIZE(payload)
    if not (type(first_lsn) is int and type(count) is int
            and 0 <= first_lsn <= 0xFFFFFFFFFFFFFFFF and 0 <= count <= 0xFFFFFFFF):
        # Let struct raise exactly what the twin's header packing raises.
        _FRAME_HEADER.pack(0, 0, first_lsn, count, stored_len, raw_len, codec, flags, 0)
    out = PyBytes_FromStringAndSize(NULL, hb + stored_len)
    p = <unsigned char *>PyBytes_AS_STRING(out)
    _put_le32(p, FRAME_MAGIC if hb == FRAME_HEADER_BYTES else FRAME_MAGIC_V1)
    _put_le32(p + 8, <uint32_t>(<uint64_t>first_lsn))
    _put_le32(p + 12, <uint32_t>((<uint64_t>first_lsn) >> 32))
    _put_le32(p + 16, <uint32_t>count)
    _put_le32(p + 20, <uint32_t>stored_len)
    _put_le32(p + 24, <uint32_t>raw_len)
    p[28] = <unsigned char>codec
    p[29] = <unsigned char>flags
    p[30] = 0
    p[31] = 0
    if hb == FRAME_HEADER_BYTES:
        # The header's own check, over every field after the frame CRC: a
        # damaged length is caught before it decides where the next frame is.
        _put_le32(p + 32, crc32c_raw(0, p + 8, FRAME_HEADER_CRC_SPAN))
    memcpy(p + hb, PyBytes_AS_STRING(payload), <size_t>stored_len)
    # The CRC covers header bytes [8, hb) and the payload: one contiguous run.
    crc = crc32c_raw(0, p + 8, <size_t>(hb - 8 + stored_len))
    _put_le32(p + 4, crc)
    return out


class FrameHeader:
    """The fields of a frame header, in on-disk order."""

    __slots__ = ("magic", "crc", "first_lsn", "count", "stored_len", "raw_len",
                 "codec", "flags", "reserved", "header_crc", "version", "header_crc_ok")

    def __init__(self, fields):
        for slot, value in zip(FrameHeader.__slots__, fields):
            setattr(self, slot, value)

    def as_dict(self):
        return {slot: getattr(self, slot) for slot in FrameHeader.__slots__}


ctypedef struct rh_hdr:
    uint32_t magic
    uint32_t crc
    uint64_t first_lsn
    uint32_t count
    uint32_t stored_len
    uint32_t raw_len
    uint32_t codec
    uint32_t flags
    uint32_t reserved
    uint32_t header_crc  # format 2; 0 in format 1
    uint32_t header_crc_ok  # format 2: header_crc matches; always 1 in format 1
    uint32_t magic_want  # the magic of the segment's format


cdef Py_ssize_t _header_bytes_of(object version) except -1:
    if version == 1:
        return FRAME_HEADER_BYTES_V1
    if version == FORMAT_VERSION:
        return FRAME_HEADER_BYTES
    raise ValueError(f"no frame format {version!r}")


cdef inline void _read_hdr(const unsigned char *p, rh_hdr *h, Py_ssize_t hb) noexcept nogil:
    h.magic = _le32(p)
    h.crc = _le32(p + 4)
    h.first_lsn = _le64(p + 8)
    h.count = _le32(p + 16)
    h.stored_len = _le32(p + 20)
    h.raw_len = _le32(p + 24)
    h.codec = p[28]
    h.flags = p[29]
    h.reserved = p[30] | (<uint32_t>p[31] << 8)
    if hb == FRAME_HEADER_BYTES:
        h.header_crc = _le32(p + 32)
        h.header_crc_ok = crc32c_raw(0, p + 8, FRAME_HEADER_CRC_SPAN) == h.header_crc
        h.magic_want = FRAME_MAGIC
    else:
        h.header_crc = 0
        h.header_crc_ok = 1
        h.magic_want = FRAME_MAGIC_V1


def parse_frame_header(buf, offset, version=FORMAT_VERSION):
    """The FrameHeader at ``offset`` of a segment of format ``version`` (no
    checks but the header checksum's, recorded as ``header_crc_ok``), or None
    if fewer than a header's bytes remain."""
    cdef Py_buffer view
    cdef rh_hdr h
    cdef Py_ssize_t hb = _header_bytes_of(version)
    if len(buf) - offset < hb:
        return None
    if not (type(offset) is int and offset >= 0 and PyObject_CheckBuffer(buf)):
        buf = bytes(buf[offset:offset + hb])
        offset = 0
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        _read_hdr(<const unsigned char *>view.buf + <Py_ssize_t>offset, &h, hb)
    finally:
        PyBuffer_Release(&view)
    return FrameHeader((h.magic, h.crc, h.first_lsn, h.count, h.stored_len, h.raw_len,
                        h.codec, h.flags, h.reserved, h.header_crc, version,
                        bool(h.header_crc_ok)))


cdef enum:
    HP_OK = 0
    HP_MAGIC
    HP_HEADER_CRC
    HP_CODEC
    HP_CAP
    HP_LENGTHS
    HP_COUNT
    HP_LSN


cdef int _header_problem(const rh_hdr *h) noexcept nogil:
    if h.magic != h.magic_want:
        return HP_MAGIC
    if not h.header_crc_ok:
        return HP_HEADER_CRC
    if (h.codec != CODEC_NONE and h.codec != CODEC_LZ4) or (h.flags & ~KNOWN_FLAGS) \
            or h.reserved != 0:
        return HP_CODEC
    if h.raw_len > MAX_FRAME_PAYLOAD_BYTES or h.stored_len > MAX_FRAME_PAYLOAD_BYTES:
        return HP_CAP
    if h.codec == CODEC_NONE and h.stored_len != h.raw_len:
        return HP_LENGTHS
    if h.count < 1 or h.count > h.raw_len // MIN_RECORD_BYTES:
        return HP_COUNT
    # first_lsn + count > 2**63, written so that it cannot overflow
    if h.first_lsn < 1 or h.first_lsn > (<uint64_t>1 << 63) - h.count:
        return HP_LSN
    return HP_OK


cdef str _header_problem_text(int code, const rh_hdr *h):
    if code == HP_MAGIC:
        return "bad magic"
    if code == HP_HEADER_CRC:
        return "frame header checksum mismatch"
    if code == HP_CODEC:
        return f"unknown codec {h.codec} or flags {h.flags:#x}/{h.reserved:#x}"
    if code == HP_CAP:
        return f"payload length {max(h.raw_len, h.stored_len)} exceeds the cap"
    if code == HP_LENGTHS:
        return "stored and raw lengths differ without a codec"
    if code == HP_COUNT:
        return f"record count {h.count} impossible for {h.raw_len} payload bytes"
    return f"first LSN {h.first_lsn} out of range"


def header_problem(h):
    """Why a header is impossible (its fields alone), or None."""
    # Fields may be any ints here (a caller-built FrameHeader), so Python math.
    if h.magic != F.frame_magic(h.version):
        return "bad magic"
    if not h.header_crc_ok:
        return "frame header checksum mismatch"
    if h.codec not in (F.CODEC_NONE, F.CODEC_LZ4) or h.flags & ~F.KNOWN_FLAGS or h.reserved != 0:
        return f"unknown codec {h.codec} or flags {h.flags:#x}/{h.reserved:#x}"
    if h.raw_len > F.MAX_FRAME_PAYLOAD_BYTES or h.stored_len > F.MAX_FRAME_PAYLOAD_BYTES:
        return f"payload length {max(h.raw_len, h.stored_len)} exceeds the cap"
    if h.codec == F.CODEC_NONE and h.stored_len != h.raw_len:
        return "stored and raw lengths differ without a codec"
    if h.count < 1 or h.count > h.raw_len // F.MIN_RECORD_BYTES:
        return f"record count {h.count} impossible for {h.raw_len} payload bytes"
    if h.first_lsn < 1 or h.first_lsn + h.count > (1 << 63):
        return f"first LSN {h.first_lsn} out of range"
    return None


cdef str _offsets_problem_text(int code):
    # The messages of rehydrate._offsets.split_offsets, for the same faults.
    if code == RH_P_OFFSETS_COUNT:
        return "bad source offsets count"
    return "bad source name length"


cdef str _payload_problem_text(int code, int64_t arg, object count):
    """The one place payload decode codes become the twin's messages."""
    if code == RH_P_DECL_COUNT:
        return "bad declaration count"
    if code == RH_P_DECL:
        return "bad table declaration"
    if code == RH_P_DECL_NAME:
        return "bad table name length"
    if code == RH_P_TOO_MANY:
        return "payload holds more records than its header counts"
    if code == RH_P_UNDECLARED:
        return f"record uses undeclared table id {arg}"
    if code == RH_P_KEY_LEN:
        return "bad key length"
    if code == RH_P_VALUE_LEN:
        return "bad value length"
    if code == RH_P_UNKNOWN_OP:
        return f"unknown op {arg}"
    if code == RH_P_MALFORMED:
        return f"malformed record for op {arg}"
    if code == RH_P_COUNT:
        return f"payload holds {arg} records, header says {count}"
    if code == RH_P_CANCELLED:
        return "cancelled"
    return "out of memory"


cdef int _mark_known(uint8_t *known, object tids) except -1:
    cdef long long t
    cdef int overflow = 0
    memset(known, 0, RH_TID_SPACE // 8)
    for tid in tids:
        if isinstance(tid, int):
            t = PyLong_AsLongLongAndOverflow(tid, &overflow)
            if overflow == 0 and 0 <= t < RH_TID_SPACE:
                known[t >> 3] |= <uint8_t>(1 << (t & 7))
    return 0


cdef inline int64_t _count_arg(object count) except? -2:
    # A count no record list can have simply never matches.
    cdef int overflow = 0
    cdef long long c = PyLong_AsLongLongAndOverflow(count, &overflow)
    if overflow or c < 0:
        return -1
    return c


def decode_payload(payload, count, seg_tids):
    """(decls, records) of a raw payload, or raise ValueError naming the fault.

    ``seg_tids`` is the set of table ids already declared in this segment;
    a record may use those or any id this payload declares. decls are
    (tid, kind, name_bytes, schema_bytes, version); records are
    (op, tid, key_bytes, value_bytes).
    """
    cdef Py_buffer view
    cdef rh_decoded dec
    cdef uint8_t *known
    cdef int64_t arg = 0
    cdef int code
    cdef size_t i
    cdef rh_decl *d
    cdef rh_rec *r
    cdef int64_t c = _count_arg(count)
    memset(&dec, 0, sizeof(rh_decoded))
    known = <uint8_t *>calloc(RH_TID_SPACE // 8, 1)
    if known == NULL:
        raise MemoryError()
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        _mark_known(known, set(seg_tids))
        code = rh_decode_payload(<const unsigned char *>view.buf, <size_t>view.len, c,
                                 known, &dec, &arg, NULL)
        if code == RH_P_NOMEM:
            raise MemoryError()
        if code != RH_P_OK:
            raise ValueError(_payload_problem_text(code, arg, count))
        decls = []
        for i in range(dec.ndecls):
            d = &dec.decls[i]
            decls.append((d.tid, d.kind, PyBytes_FromStringAndSize(<const char *>d.name, d.nlen),
                          PyBytes_FromStringAndSize(<const char *>d.schema, d.slen)
                          if d.slen else b"", d.version))
        records = []
        for i in range(dec.nrecs):
            r = &dec.recs[i]
            records.append((r.op, r.tid,
                            PyBytes_FromStringAndSize(<const char *>r.key, r.klen),
                            PyBytes_FromStringAndSize(<const char *>r.val, r.vlen)))
        return decls, records
    finally:
        PyBuffer_Release(&view)
        free(known)
        rh_decoded_free(&dec)


class ScanResult:
    """Where and why a scan stopped. ``offset`` is the start of the frame at
    fault (or the end of the buffer when ``status`` is SCAN_OK); ``frame_end``
    is that frame's claimed end (-1 when its header was not read)."""

    __slots__ = ("status", "offset", "next_lsn", "frames", "records",
                 "applied", "frame_end", "detail")

    def __init__(self, status, offset, next_lsn, frames, records, applied,
                 frame_end, detail):
        self.status = status
        self.offset = offset
        self.next_lsn = next_lsn
        self.frames = frames
        self.records = records
        self.applied = applied
        self.frame_end = frame_end
        self.detail = detail

    def as_dict(self):
        return {slot: getattr(self, slot) for slot in ScanResult.__slots__}

    def __repr__(self):
        return f"ScanResult({self.as_dict()!r})"


class SegmentContext:
    """Per-segment table declarations seen so far, bound to a registry.

    ``registry.declare(tid, kind, name_bytes, schema, version)`` returns the
    table to apply to (or None when not applying) and raises RehydrateError on
    a conflict.
    ``tables`` is a plain dict tid -> table; scan_frames resolves it into a C
    array once per frame, so callers may read and change it freely between
    frames.
    """

    def __init__(self, registry, offsets=None):
        self.registry = registry
        self.tables = {}
        # Source offsets of the frames scanned, merged (shared across segments).
        self.offsets = {} if offsets is None else offsets

    def adopt(self, tid, table):
        """Treat ``tid`` as declared in this segment (salvage after a lost frame
        whose declarations are known from earlier segments)."""
        if tid not in self.tables:
            self.tables[tid] = table


# Stage outcomes of the GIL-free part of a frame.
cdef enum:
    ST_OK = 0
    ST_CRC
    ST_GAP
    ST_OVERLAP
    ST_LZ4
    ST_LZ4_LENGTH
    ST_PAYLOAD
    ST_OFFSETS
    ST_NOMEM


cdef class _Scanner:
    """The state of one scan_frames call: buffers reused from frame to frame."""
    cdef Py_buffer view
    cdef bint have_view
    cdef Py_buffer cview
    cdef bint have_cview
    cdef unsigned char *lz4_out
    cdef size_t lz4_cap
    cdef rh_decoded dec
    cdef uint8_t *known
    cdef PyObject **tab_obj
    cdef rh_kv **tab_kv
    cdef rh_numtab **tab_num
    cdef uint8_t *tab_many
    cdef uint32_t *tab_gen
    cdef uint32_t gen

    def __cinit__(self):
        self.have_view = self.have_cview = False
        self.lz4_out = NULL
        self.lz4_cap = 0
        memset(&self.dec, 0, sizeof(rh_decoded))
        self.known = NULL
        self.tab_obj = NULL
        self.tab_kv = NULL
        self.tab_num = NULL
        self.tab_many = NULL
        self.tab_gen = NULL
        self.gen = 0

    def __dealloc__(self):
        self.release()

    cdef void release(self) noexcept:
        if self.have_view:
            PyBuffer_Release(&self.view)
            self.have_view = False
        if self.have_cview:
            PyBuffer_Release(&self.cview)
            self.have_cview = False
        free(self.lz4_out)
        self.lz4_out = NULL
        rh_decoded_free(&self.dec)
        free(self.known)
        self.known = NULL
        free(self.tab_obj)
        self.tab_obj = NULL
        free(self.tab_kv)
        self.tab_kv = NULL
        free(self.tab_num)
        self.tab_num = NULL
        free(self.tab_many)
        self.tab_many = NULL
        free(self.tab_gen)
        self.tab_gen = NULL


cdef class _NumView:
    """A NumericTable's columns as numcore.h sees them, for one frame's
    replay; holds what the raw pointers point into."""
    cdef rh_numtab t
    cdef list refs

    def __cinit__(self):
        memset(&self.t, 0, sizeof(rh_numtab))

    def __dealloc__(self):
        free(self.t.names)
        free(self.t.nlens)
        free(self.t.is_float)
        free(self.t.cols)


cdef inline bint _numeric_columns(object table) except -1:
    # A NumericTable, known by what its class says (rehydrate.numeric sets
    # _rh_numeric_columns), so the core need not import it. Asked once per
    # table and frame, not per record.
    return getattr(type(table), "_rh_numeric_columns", False) is True


cdef _NumView _num_view(object table):
    """The view of ``table``'s columns, or None when a column is not a
    writable, contiguous, little-endian 8-byte array (the Python path then
    applies, and raises what numpy raises)."""
    cdef _NumView v = _NumView()
    cdef Py_ssize_t n, j
    cdef bytes nb
    arrays = table._live()
    columns = list(table.columns.items())
    n = len(columns)
    v.refs = [arrays]
    v.t.rows = table.rows
    v.t.ncols = <uint32_t>n
    v.t.names = <const unsigned char **>calloc(n, sizeof(void *))
    v.t.nlens = <uint32_t *>calloc(n, sizeof(uint32_t))
    v.t.is_float = <unsigned char *>calloc(n, 1)
    v.t.cols = <void **>calloc(n, sizeof(void *))
    if v.t.names == NULL or v.t.nlens == NULL or v.t.is_float == NULL or v.t.cols == NULL:
        raise MemoryError()
    for j in range(n):
        a = arrays[j]
        if not (a.flags.c_contiguous and a.flags.writeable and a.dtype.itemsize == 8
                and a.dtype.byteorder in "=<|" and len(a) == table.rows):
            return None
        nb = columns[j][0].encode("utf-8")
        v.refs.append(nb)
        v.t.names[j] = <const unsigned char *>PyBytes_AS_STRING(nb)
        v.t.nlens[j] = <uint32_t>PyBytes_GET_SIZE(nb)
        v.t.is_float[j] = columns[j][1] == "float64"
        v.t.cols[j] = <void *><size_t>a.ctypes.data
    return v


cdef inline int _apply_py(rh_rec *r, object t) except -1:
    # A table that is not a native KVTable: the twin's method calls.
    cdef rh_num d
    if r.op == OP_CLEAR:
        t._clear()
        return 0
    kb = PyBytes_FromStringAndSize(<const char *>r.key, r.klen)
    if r.op == OP_PUT:
        t._put_raw(kb, PyBytes_FromStringAndSize(<const char *>r.val, r.vlen))
    elif r.op == OP_DELETE:
        t._delete_raw(kb)
    elif r.op == OP_CUSTOM:
        apply_custom(t, kb, PyBytes_FromStringAndSize(<const char *>r.val, r.vlen))
    else:
        rh_decode_number(r.val, r.vlen, &d)
        t._incr_raw(kb, num_to_py(&d))
    return 0


def scan_frames(buf, offset, next_lsn, applied_lsn, ctx, apply=True,
                cancel=None, progress=None, progress_every=4 << 20, version=FORMAT_VERSION):
    """Check, decode and (if ``apply``) replay frames from ``offset`` to the end.

    Records with LSN <= ``applied_lsn`` are checked but not applied, so a
    replay over state that already has them changes nothing. Stops at the
    first frame that fails a check, leaving the state as of the frame before.
    ``cancel``: a writable buffer; a non-zero first byte stops the scan (polled
    at every frame and every 8192 records while a frame is decoded; never in
    the middle of applying a frame, which would break its atomicity).
    ``progress(offset)`` is called about every ``progress_every`` bytes.
    ``version``: the format of the segment the frames are in.
    """
    cdef _Scanner sc = _Scanner()
    cdef Py_ssize_t hb = _header_bytes_of(version)
    cdef const unsigned char *base
    cdef const char *cancel_ptr = NULL
    cdef int64_t off, end, frame_end, body
    cdef int64_t nlsn = next_lsn
    cdef int64_t applied_to = applied_lsn
    cdef int64_t frames = 0, records = 0, applied = 0, frame_applied
    cdef int64_t next_progress, every = progress_every
    cdef int64_t arg = 0
    cdef rh_hdr h
    cdef int code, stage, pcode = 0
    cdef Py_ssize_t lz4_got = 0
    cdef const unsigned char *payload
    cdef size_t plen, i, n, start, j, m, skip_to, resume
    cdef rh_rec *recs
    cdef rh_rec *r
    cdef rh_rec *ahead
    cdef rh_kv *kv
    cdef rh_slot *slot
    cdef rh_key k
    cdef rh_num d, cur
    cdef uint32_t tid
    cdef int st
    cdef bint do_apply = bool(apply)
    cdef bint py_cancel = False
    cdef rh_decl *dc
    cdef const unsigned char *opay = NULL
    cdef size_t oused = 0
    cdef int ocode = 0
    cdef object frame_offsets

    off = offset
    if off < 0:
        raise ValueError("offset must be >= 0")
    next_progress = off + every
    PyObject_GetBuffer(buf, &sc.view, PyBUF_SIMPLE)
    sc.have_view = True
    base = <const unsigned char *>sc.view.buf
    end = sc.view.len
    if cancel is not None:
        if PyObject_CheckBuffer(cancel):
            PyObject_GetBuffer(cancel, &sc.cview, PyBUF_SIMPLE)
            sc.have_cview = True
            if sc.cview.len > 0:
                cancel_ptr = <const char *>sc.cview.buf
            else:
                py_cancel = True
        else:
            py_cancel = True
    sc.known = <uint8_t *>calloc(RH_TID_SPACE // 8, 1)
    if sc.known == NULL:
        raise MemoryError()
    if do_apply:
        sc.tab_obj = <PyObject **>calloc(RH_TID_SPACE, sizeof(PyObject *))
        sc.tab_kv = <rh_kv **>calloc(RH_TID_SPACE, sizeof(rh_kv *))
        sc.tab_num = <rh_numtab **>calloc(RH_TID_SPACE, sizeof(rh_numtab *))
        sc.tab_many = <uint8_t *>calloc(RH_TID_SPACE, 1)
        sc.tab_gen = <uint32_t *>calloc(RH_TID_SPACE, sizeof(uint32_t))
        if (sc.tab_obj == NULL or sc.tab_kv == NULL or sc.tab_num == NULL
                or sc.tab_many == NULL or sc.tab_gen == NULL):
            raise MemoryError()
    try:
        while off < end:
            tables = ctx.tables
            if (cancel_ptr != NULL and cancel_ptr[0]) or (py_cancel and cancel[0]):
                return ScanResult(SCAN_CANCELLED, off, nlsn, frames, records, applied, -1, "cancelled")
            if end - off < hb:
                return ScanResult(SCAN_TRUNCATED, off, nlsn, frames, records, applied, -1,
                                  "partial frame header")
            _read_hdr(base + off, &h, hb)
            code = _header_problem(&h)
            if code != HP_OK:
                return ScanResult(SCAN_BAD_MAGIC if code == HP_MAGIC else SCAN_BAD_HEADER,
                                  off, nlsn, frames, records, applied, -1,
                                  _header_problem_text(code, &h))
            body = off + hb
            frame_end = body + h.stored_len
            if frame_end > end:
                return ScanResult(SCAN_TRUNCATED, off, nlsn, frames, records, applied,
                                  frame_end, "frame runs past the end")
            # Which table ids this frame's records may use: the segment's so far.
            _mark_known(sc.known, tables)
            if h.codec == CODEC_LZ4 and sc.lz4_cap < <size_t>h.raw_len + RH_LZ4_SLACK:
                free(sc.lz4_out)
                sc.lz4_cap = <size_t>h.raw_len + RH_LZ4_SLACK
                sc.lz4_out = <unsigned char *>malloc(sc.lz4_cap)
                if sc.lz4_out == NULL:
                    sc.lz4_cap = 0
                    raise MemoryError()
            with nogil:
                stage = ST_OK
                if crc32c_raw(0, base + off + 8, <size_t>(frame_end - off - 8)) != h.crc:
                    stage = ST_CRC
                elif <int64_t>h.first_lsn > nlsn:
                    stage = ST_GAP
                elif <int64_t>h.first_lsn < nlsn:
                    stage = ST_OVERLAP
                else:
                    payload = base + body
                    plen = h.stored_len
                    if h.codec == CODEC_LZ4:
                        lz4_got = lz4_decode_raw(payload, plen, sc.lz4_out, h.raw_len)
                        if lz4_got < 0:
                            stage = ST_LZ4
                        elif lz4_got != <Py_ssize_t>h.raw_len:
                            stage = ST_LZ4_LENGTH
                        payload = sc.lz4_out
                        plen = h.raw_len
                    if stage == ST_OK and (h.flags & FLAG_OFFSETS):
                        # The offsets section's bytes; checked in full (order,
                        # UTF-8) by the shared Python parser below.
                        ocode = rh_skip_offsets(payload, plen, &oused)
                        if ocode != RH_P_OK:
                            stage = ST_OFFSETS
                        else:
                            opay = payload
                            payload = payload + oused
                            plen = plen - oused
                    if stage == ST_OK:
                        pcode = rh_decode_payload(payload, plen, h.count, sc.known, &sc.dec,
                                                  &arg, cancel_ptr)
                        if pcode != RH_P_OK:
                            stage = ST_PAYLOAD
            if stage == ST_CRC:
                return ScanResult(SCAN_BAD_CRC, off, nlsn, frames, records, applied,
                                  frame_end, "checksum mismatch")
            if stage == ST_GAP or stage == ST_OVERLAP:
                return ScanResult(SCAN_LSN_GAP if stage == ST_GAP else SCAN_LSN_OVERLAP,
                                  off, nlsn, frames, records, applied, frame_end,
                                  f"frame starts at LSN {h.first_lsn}, expected {nlsn}")
            if stage == ST_LZ4:
                return ScanResult(SCAN_BAD_PAYLOAD, off, nlsn, frames, records, applied,
                                  frame_end, f"LZ4 block does not decompress: {lz4_reason(lz4_got)}")
            if stage == ST_LZ4_LENGTH:
                return ScanResult(SCAN_BAD_PAYLOAD, off, nlsn, frames, records, applied,
                                  frame_end, "LZ4 block decompressed to the wrong length")
            if stage == ST_OFFSETS:
                return ScanResult(SCAN_BAD_PAYLOAD, off, nlsn, frames, records, applied,
                                  frame_end, _offsets_problem_text(ocode))
            frame_offsets = None
            if h.flags & FLAG_OFFSETS:
                # Before the records' verdict, as the twin parses offsets first.
                try:
                    frame_offsets = split_offsets(
                        PyBytes_FromStringAndSize(<const char *>opay, <Py_ssize_t>oused))[0]
                except ValueError as e:
                    return ScanResult(SCAN_BAD_PAYLOAD, off, nlsn, frames, records, applied,
                                      frame_end, str(e))
            if stage == ST_PAYLOAD:
                if pcode == RH_P_NOMEM:
                    raise MemoryError()
                if pcode == RH_P_CANCELLED:
                    return ScanResult(SCAN_CANCELLED, off, nlsn, frames, records, applied, -1,
                                      "cancelled")
                return ScanResult(SCAN_BAD_PAYLOAD, off, nlsn, frames, records, applied,
                                  frame_end, _payload_problem_text(pcode, arg, h.count))
            # Declarations reach the registry in order, as in the twin.
            try:
                for i in range(sc.dec.ndecls):
                    dc = &sc.dec.decls[i]
                    # Every kind decodes the same records; what a kind means
                    # is the registry's business (rehydrate/tables.py).
                    if dc.kind < KIND_KV or dc.kind > KIND_NUMERIC:
                        raise ValueError(f"unknown table kind {dc.kind}")
                    tables[dc.tid] = ctx.registry.declare(
                        dc.tid, dc.kind, PyBytes_FromStringAndSize(<const char *>dc.name, dc.nlen),
                        PyBytes_FromStringAndSize(<const char *>dc.schema, dc.slen)
                        if dc.slen else b"", dc.version)
            except (ValueError, RehydrateError) as e:
                return ScanResult(SCAN_BAD_PAYLOAD, off, nlsn, frames, records, applied,
                                  frame_end, str(e))
            if do_apply:
                n = sc.dec.nrecs
                recs = sc.dec.recs
                # Records at or below applied_lsn are checked, not applied.
                if applied_to >= <int64_t>h.first_lsn:
                    start = <size_t>(applied_to - <int64_t>h.first_lsn + 1)
                    if start > n:
                        start = n
                else:
                    start = 0
                # Resolve each record's table once per frame; strong references
                # in `alive` keep the objects valid even if a callback drops them
                # from ctx.tables meanwhile.
                sc.gen += 1
                alive = []
                all_numeric = True
                for i in range(start, n):
                    r = &recs[i]
                    if r.op == OP_NOOP:  # names no table
                        r.kv = NULL
                        r.obj = NULL
                        r.num = NULL
                        continue
                    tid = r.tid
                    if sc.tab_gen[tid] != sc.gen:
                        t = tables[tid]
                        alive.append(t)
                        sc.tab_obj[tid] = <PyObject *>t
                        sc.tab_kv[tid] = &(<KVTable>t).kv if type(t) is KVTable else NULL
                        # A custom table with its own apply_many (looked up
                        # once per frame, not per record).
                        sc.tab_many[tid] = sc.tab_kv[tid] == NULL and bool(
                            getattr(t, "_rh_many", False))
                        sc.tab_num[tid] = NULL
                        if sc.tab_kv[tid] == NULL and _numeric_columns(t):
                            nv = _num_view(t)
                            if nv is not None:
                                alive.append(nv)
                                sc.tab_num[tid] = &(<_NumView>nv).t
                        sc.tab_gen[tid] = sc.gen
                    r.kv = sc.tab_kv[tid]
                    r.obj = sc.tab_obj[tid]
                    r.num = sc.tab_num[tid]
                    if r.num == NULL:
                        all_numeric = False
                frame_applied = 0
                if all_numeric and n > start:
                    # Only numeric tables' records: set cells without the GIL,
                    # up to the first record the native path leaves to Python.
                    with nogil:
                        j = rh_num_apply_run(&recs[start], n - start)
                    frame_applied = <int64_t>j
                    start += j
                skip_to = start
                resume = start
                on_error = getattr(ctx, "on_apply_error", None)
                while True:
                    try:
                        for i in range(resume, n):
                            if i < skip_to:
                                continue  # handed to an apply_many already
                            if i + PREFETCH_SLOTS < n:
                                ahead = &recs[i + PREFETCH_SLOTS]
                                kv = <rh_kv *>ahead.kv
                                if kv != NULL and kv.slots != NULL:
                                    RH_PREFETCH(&kv.slots[ahead.hash & kv.mask])
                            if i + PREFETCH_ENTRIES < n:
                                ahead = &recs[i + PREFETCH_ENTRIES]
                                kv = <rh_kv *>ahead.kv
                                if kv != NULL and kv.slots != NULL:
                                    slot = &kv.slots[ahead.hash & kv.mask]
                                    if slot.off != 0:
                                        # header + key, and the value's line
                                        RH_PREFETCH(kv.arena + slot.off)
                                        RH_PREFETCH(kv.arena + slot.off + 63)
                            r = &recs[i]
                            kv = <rh_kv *>r.kv
                            if r.op == OP_NOOP:
                                pass
                            elif r.num != NULL:
                                if rh_num_apply_run(r, 1) == 0:
                                    _apply_py(r, <object>r.obj)
                            elif kv == NULL and sc.tab_many[r.tid]:
                                # A custom table with its own apply_many: the run
                                # of its records, in one call.
                                j = i
                                while j < n and recs[j].op != OP_NOOP and recs[j].obj == r.obj:
                                    j += 1
                                skip_to = j  # (also how far an error skips)
                                (<object>r.obj)._rh_apply_raw_many(
                                    [(recs[m].op,
                                      PyBytes_FromStringAndSize(<const char *>recs[m].key,
                                                                recs[m].klen) if recs[m].klen else None,
                                      PyBytes_FromStringAndSize(<const char *>recs[m].val,
                                                                recs[m].vlen))
                                     for m in range(i, j)])
                                frame_applied += <int64_t>(j - i) - 1
                            elif kv == NULL:
                                _apply_py(r, <object>r.obj)
                            elif r.op == OP_PUT:
                                _key_of_record(&k, r.key, r.klen, r.hash)
                                if rh_put(kv, &k, r.val, r.vlen, 0) < 0:
                                    raise MemoryError()
                            elif r.op == OP_DELETE:
                                _key_of_record(&k, r.key, r.klen, r.hash)
                                rh_delete(kv, &k)
                            elif r.op == OP_INCR:
                                _key_of_record(&k, r.key, r.klen, r.hash)
                                rh_decode_number(r.val, r.vlen, &d)
                                st = rh_incr(kv, &k, &d, &cur)
                                if st != RH_INCR_OK:
                                    if st < 0:
                                        raise MemoryError()
                                    raise incr_error(st, &cur, num_to_py(&d))
                            elif r.op == OP_CLEAR:
                                rh_clear(kv)
                            else:  # OP_CUSTOM: a native KV table takes none
                                apply_custom(<object>r.obj, None, b"")
                            frame_applied += 1
                        break
                    except InvalidOperationError as e:
                        if on_error is None:
                            # As in the twin: the frame's earlier records stay
                            # applied and are not counted (see the report on this).
                            return ScanResult(SCAN_APPLY_ERROR, off, nlsn, frames, records,
                                              applied, frame_end, str(e))
                        # skip-corrupted: leave out the record (or the records of
                        # an apply_many call) that raised, and go on.
                        j = skip_to if skip_to > i else i + 1
                        on_error(<int64_t>h.first_lsn + <int64_t>i, recs[i].tid,
                                 [(recs[m].op,
                                   PyBytes_FromStringAndSize(<const char *>recs[m].key,
                                                             recs[m].klen),
                                   PyBytes_FromStringAndSize(<const char *>recs[m].val,
                                                             recs[m].vlen))
                                  for m in range(i, j)], e)
                        resume = j
                applied += frame_applied
            if frame_offsets is not None and \
                    <int64_t>h.first_lsn + <int64_t>h.count - 1 > applied_to:
                ctx.offsets.update(frame_offsets)
            frames += 1
            records += h.count
            nlsn = <int64_t>h.first_lsn + h.count
            off = frame_end
            if progress is not None and off >= next_progress:
                progress(off)
                next_progress = off + every
        return ScanResult(SCAN_OK, off, nlsn, frames, records, applied, -1, "")
    finally:
        sc.release()

