# Growable byte buffer and the format's varints (header-only, rhbuf.h).
from libc.stdint cimport int64_t, uint64_t

cdef extern from "rhbuf.h":
    ctypedef struct rh_buf:
        unsigned char *data
        size_t len
        size_t cap
    int rh_buf_reserve(rh_buf *b, size_t extra) nogil
    void rh_buf_free(rh_buf *b) nogil
    void rh_buf_put_byte(rh_buf *b, unsigned char c) nogil
    void rh_buf_put_bytes(rh_buf *b, const void *p, size_t n) nogil
    void rh_buf_put_varint(rh_buf *b, uint64_t v) nogil
    size_t rh_varint_len(uint64_t v) nogil
    int64_t rh_read_varint(const unsigned char *p, size_t *pos, size_t end) nogil
