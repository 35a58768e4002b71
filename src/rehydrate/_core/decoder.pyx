# cython: language_level=3
"""Frame payloads in (native): decode_payload, and the messages the decoder's
fault codes (payload.h) become, shared with the scanner.

Twin of ``decode_payload`` in ``rehydrate._pure.frames``: the same
declarations and records, or a ValueError with the same message.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

from .includes.payload cimport (
    RH_P_CANCELLED, RH_P_COUNT, RH_P_DECL, RH_P_DECL_COUNT, RH_P_DECL_NAME, RH_P_KEY_LEN,
    RH_P_MALFORMED, RH_P_NOMEM, RH_P_OFFSETS_COUNT, RH_P_OK, RH_P_TOO_MANY, RH_P_UNDECLARED,
    RH_P_UNKNOWN_OP, RH_P_VALUE_LEN, RH_TID_SPACE, rh_decl, rh_decode_payload, rh_decoded,
    rh_decoded_free, rh_rec,
)


cdef str offsets_problem_text(int code):
    # The messages of rehydrate._offsets.split_offsets, for the same faults.
    if code == RH_P_OFFSETS_COUNT:
        return "bad source offsets count"
    return "bad source name length"


cdef str payload_problem_text(int code, int64_t arg, object count):
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


cdef int mark_known(uint8_t *known, object tids) except -1:
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
        mark_known(known, set(seg_tids))
        code = rh_decode_payload(<const unsigned char *>view.buf, <size_t>view.len, c,
                                 known, &dec, &arg, NULL)
        if code == RH_P_NOMEM:
            raise MemoryError()
        if code != RH_P_OK:
            raise ValueError(payload_problem_text(code, arg, count))
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
