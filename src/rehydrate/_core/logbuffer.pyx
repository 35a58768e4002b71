# cython: language_level=3
"""The writer's buffer (native): Staging, one batch's records before commit,
and LogBuffer, the records appended since the last frame was cut.

Twin of the same names in ``rehydrate._pure.frames``. Each write validates,
applies to the table and appends the record with its LSN; the store cuts the
pending records into a frame with rehydrate._core.encoder.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memset

from ._format cimport MAX_FRAME_PAYLOAD_BYTES, OP_CLEAR, OP_CUSTOM, OP_DELETE, OP_INCR, OP_NOOP, OP_PUT
from ._frameutil cimport PREFETCH_SLOTS, key_of_record
from .codec cimport delta_num, incr_error, key_bytes, key_view, num_to_py, pack_into
from .includes.kvcore cimport (
    rh_clear, rh_delete, rh_entry, rh_find, rh_incr, rh_key, rh_key_from_bytes, rh_kv, rh_put,
)
from .includes.rh_compiler cimport RH_PREFETCH
from .includes.rhbuf cimport (
    rh_buf, rh_buf_free, rh_buf_put_byte, rh_buf_put_bytes, rh_buf_put_varint, rh_buf_reserve,
)
from .includes.valcodec cimport RH_INCR_OK, RH_NUM_MAX_BYTES, rh_num, rh_pack_num
from .kvtable cimport KVTable

from rehydrate import _format as F
from rehydrate._custom import apply_custom
from rehydrate.errors import BatchTooLargeError, ConfigError

from .codec import encode_key, encode_varint, pack_value

# A batch's records must fit one frame with room for every table declaration:
# 65536 of at most 266 bytes (id 3, kind 1, name 2 + 255, version 5) take
# under 17 MiB of the other half (a numeric table's schema comes on top).
MAX_BATCH_RECORD_BYTES = F.MAX_FRAME_PAYLOAD_BYTES // 2

cdef enum:
    C_MAX_BATCH_RECORD_BYTES = MAX_FRAME_PAYLOAD_BYTES // 2
    # Everything but a record's key and value: op, 3 varints of <= 10 bytes.
    RECORD_OVERHEAD = 31


# ---------------------------------------------------------------- helpers

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
                    key_of_record(&k, data + op.koff, op.klen, op.hash)
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
                    key_of_record(&k, data + op.koff, op.klen, op.hash)
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
