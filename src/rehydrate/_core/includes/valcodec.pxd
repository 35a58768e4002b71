# msgpack numbers in C (header-only, valcodec.h).
from libc.stdint cimport int64_t, uint64_t

cdef extern from "valcodec.h":
    enum:
        RH_NUM_I64
        RH_NUM_U64
        RH_NUM_F64
        RH_INCR_OK
        RH_INCR_NOT_NUMBER
        RH_INCR_OUT_OF_INT64
        RH_INCR_OVERFLOW
        RH_NUM_MAX_BYTES
    ctypedef struct rh_num:
        int kind
        int64_t i
        uint64_t u
        double d
    int rh_decode_number(const unsigned char *p, size_t n, rh_num *out) nogil
    size_t rh_pack_i64(int64_t v, unsigned char *out) nogil
    size_t rh_pack_u64(uint64_t v, unsigned char *out) nogil
    size_t rh_pack_f64(double d, unsigned char *out) nogil
    size_t rh_pack_num(const rh_num *n, unsigned char *out) nogil
    int rh_incr_bytes(const unsigned char *old, size_t oldlen, int has_old,
                      const rh_num *delta, rh_num *cur,
                      unsigned char *out, size_t *outlen) nogil
    int rh_mp_skip(const unsigned char *p, size_t n, size_t *used) nogil
