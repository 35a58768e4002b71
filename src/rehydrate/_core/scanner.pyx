# cython: language_level=3
"""Frames in (native): header parsing and checks, and scan_frames, the
replay loop.

Twin of the same names in ``rehydrate._pure.frames``: same ScanResult for
the same input. scan_frames is the hot loop. Per frame it checks the header,
then, without the GIL, the CRC, the LSN order, LZ4 and the structure of
every record (into a C array of descriptors, keys already hashed; payload.h);
only a frame that passes all of that is applied, with the GIL held because
the tables are Python objects.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

from ._format cimport (
    CODEC_LZ4, CODEC_NONE, FLAG_OFFSETS, FORMAT_VERSION, FRAME_HEADER_BYTES,
    FRAME_HEADER_CRC_SPAN, FRAME_MAGIC, FRAME_MAGIC_V1, KIND_KV, KIND_NUMERIC, KNOWN_FLAGS,
    MAX_FRAME_PAYLOAD_BYTES, MIN_RECORD_BYTES, OP_CLEAR, OP_CUSTOM, OP_DELETE, OP_INCR,
    OP_NOOP, OP_PUT, SCAN_APPLY_ERROR, SCAN_BAD_CRC, SCAN_BAD_HEADER, SCAN_BAD_MAGIC,
    SCAN_BAD_PAYLOAD, SCAN_CANCELLED, SCAN_LSN_GAP, SCAN_LSN_OVERLAP, SCAN_OK, SCAN_TRUNCATED,
)
from ._frameutil cimport (
    PREFETCH_ENTRIES, PREFETCH_SLOTS, header_bytes_of, key_of_record, le32, le64,
)
from .codec cimport crc32c_raw, incr_error, lz4_decode_raw, lz4_reason, num_to_py
from .decoder cimport mark_known, offsets_problem_text, payload_problem_text
from .includes.kvcore cimport rh_clear, rh_delete, rh_incr, rh_key, rh_kv, rh_put, rh_slot
from .includes.lz4_decode cimport RH_LZ4_SLACK
from .includes.numcore cimport rh_num_apply_run, rh_numtab
from .includes.payload cimport (
    RH_P_CANCELLED, RH_P_NOMEM, RH_P_OK, RH_TID_SPACE, rh_decl, rh_decode_payload, rh_decoded,
    rh_decoded_free, rh_rec, rh_skip_offsets,
)
from .includes.rh_compiler cimport RH_PREFETCH
from .includes.valcodec cimport RH_INCR_OK, rh_decode_number, rh_num
from .kvtable cimport KVTable

from rehydrate import _format as F
from rehydrate._custom import apply_custom
from rehydrate._offsets import split_offsets
from rehydrate.errors import InvalidOperationError, RehydrateError


# ---------------------------------------------------------------- headers

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


cdef inline void _read_hdr(const unsigned char *p, rh_hdr *h, Py_ssize_t hb) noexcept nogil:
    h.magic = le32(p)
    h.crc = le32(p + 4)
    h.first_lsn = le64(p + 8)
    h.count = le32(p + 16)
    h.stored_len = le32(p + 20)
    h.raw_len = le32(p + 24)
    h.codec = p[28]
    h.flags = p[29]
    h.reserved = p[30] | (<uint32_t>p[31] << 8)
    if hb == FRAME_HEADER_BYTES:
        h.header_crc = le32(p + 32)
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
    cdef Py_ssize_t hb = header_bytes_of(version)
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


# ---------------------------------------------------------------- scan

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
    cdef Py_ssize_t hb = header_bytes_of(version)
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
            mark_known(sc.known, tables)
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
                                  frame_end, offsets_problem_text(ocode))
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
                                  frame_end, payload_problem_text(pcode, arg, h.count))
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
                                key_of_record(&k, r.key, r.klen, r.hash)
                                if rh_put(kv, &k, r.val, r.vlen, 0) < 0:
                                    raise MemoryError()
                            elif r.op == OP_DELETE:
                                key_of_record(&k, r.key, r.klen, r.hash)
                                rh_delete(kv, &k)
                            elif r.op == OP_INCR:
                                key_of_record(&k, r.key, r.klen, r.hash)
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
