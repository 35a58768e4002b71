# XXH64 (xxh64.h, header-only): one-shot, streaming, and four inputs at once.
from libc.stdint cimport uint64_t

cdef extern from "xxh64.h":
    ctypedef struct rh_xxh64_state:
        pass
    uint64_t rh_xxh64(const void *data, size_t n, uint64_t seed) nogil
    void rh_xxh64_reset(rh_xxh64_state *s, uint64_t seed) nogil
    void rh_xxh64_update(rh_xxh64_state *s, const void *data, size_t n) nogil
    uint64_t rh_xxh64_digest(const rh_xxh64_state *s) nogil
    void rh_xxh64_x4(const unsigned char *const p[4], const size_t n[4], uint64_t seed,
                     uint64_t out[4]) nogil
