# Inline helpers the frame modules share (logbuffer, encoder, scanner): each
# module that cimports this file compiles them in, so the hot loops call no
# function across modules. No .pyx: nothing here exists at run time.
from libc.stdint cimport uint32_t, uint64_t

from ._format cimport FORMAT_VERSION, FRAME_HEADER_BYTES, FRAME_HEADER_BYTES_V1
from .includes.kvcore cimport rh_key

cdef enum:
    # Replay and commit prefetch the home slot this many records ahead, and
    # the entry that slot points to half as far ahead (by then the slot is in
    # cache).
    PREFETCH_SLOTS = 16
    PREFETCH_ENTRIES = 8


cdef inline uint32_t le32(const unsigned char *p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint64_t le64(const unsigned char *p) noexcept nogil:
    return (<uint64_t>le32(p)) | ((<uint64_t>le32(p + 4)) << 32)


cdef inline void put_le32(unsigned char *p, uint32_t v) noexcept nogil:
    p[0] = <unsigned char>v
    p[1] = <unsigned char>(v >> 8)
    p[2] = <unsigned char>(v >> 16)
    p[3] = <unsigned char>(v >> 24)


cdef inline void key_of_record(rh_key *k, const unsigned char *kb, uint32_t klen, uint64_t h) noexcept nogil:
    # Record keys are well formed (at least the tag byte), checked at decode.
    k.tag = kb[0]
    k.body = kb + 1
    k.len = klen - 1
    k.hash = h


cdef inline Py_ssize_t header_bytes_of(object version) except -1:
    if version == 1:
        return FRAME_HEADER_BYTES_V1
    if version == FORMAT_VERSION:
        return FRAME_HEADER_BYTES
    raise ValueError(f"no frame format {version!r}")
