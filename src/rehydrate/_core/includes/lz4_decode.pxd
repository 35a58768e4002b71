# The bounds-checked LZ4 block decoder (lz4_decode.c; codec module only).
cdef extern from "lz4_decode.h":
    enum:
        RH_LZ4_SLACK
    ptrdiff_t rh_lz4_decode(const unsigned char *src, size_t src_len,
                            unsigned char *dst, size_t dst_cap) nogil
    const char *rh_lz4_reason(ptrdiff_t status) nogil
