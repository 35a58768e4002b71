# C-level surface of rehydrate._core.codec shared with kvtable and the frame
# modules (`from .codec cimport ...`).
from libc.stdint cimport uint32_t
from .includes.kvcore cimport rh_key
from .includes.rhbuf cimport rh_buf
from .includes.valcodec cimport rh_num

# Fills *k for a Python key (str, bytes or int; a view, nothing copied; ibuf
# holds an int key's 8 bytes). Returns 0; or 1 for an unsupported key when
# soft, else raises UnsupportedKeyError. UnicodeEncodeError always propagates.
cdef int key_view(object key, rh_key *k, unsigned char *ibuf, bint soft) except -1
cdef bytes key_bytes(const rh_key *k)
cdef object decode_key_ptr(const unsigned char *p, Py_ssize_t n)
cdef object unpack_ptr(const unsigned char *p, Py_ssize_t n)
# Appends the msgpack bytes of value to out (ValueEncodingError, MemoryError).
cdef int pack_into(object value, rh_buf *out) except -1
# check_delta: *out gets the delta, or InvalidOperationError.
cdef int delta_num(object delta, rh_num *out) except -1
# The delta as a number when it is an int within uint64/int64 or a float;
# returns 0 (not raising) when the generic Python path must run.
cdef int fast_delta(object delta, rh_num *out) except -1
cdef object num_to_py(const rh_num *n)
cdef object incr_error(int status, const rh_num *cur, object delta)
cdef object incr_value_generic(object old, object delta)
cdef uint32_t crc32c_raw(uint32_t value, const unsigned char *p, size_t n) noexcept nogil
cdef Py_ssize_t lz4_decode_raw(const unsigned char *src, size_t n,
                               unsigned char *dst, size_t cap) noexcept nogil
cdef str lz4_reason(Py_ssize_t status)
