# Snapshot images of a KVTable (header-only, kvimage.h): build, check, map.
from libc.stdint cimport uint32_t, uint64_t
from .kvcore cimport rh_kv

cdef extern from "kvimage.h":
    enum:
        RH_IMG_HEADER
    ctypedef struct rh_img_header:
        uint32_t version
        uint32_t slot_bits
        uint64_t count
        uint64_t arena_len
        uint64_t slots
    int rh_img_read_header(const unsigned char *p, uint64_t file_size, rh_img_header *h) nogil
    uint64_t rh_img_size(const rh_kv *src, uint64_t *arena_len) nogil
    int rh_img_build(const rh_kv *src, unsigned char *out, uint64_t arena_len) nogil
    int rh_img_map(rh_kv *kv, int fd, const rh_img_header *h) nogil
    int rh_img_digest_sum(const unsigned char *arena, uint64_t len, uint64_t count,
                          uint64_t *sum) nogil
