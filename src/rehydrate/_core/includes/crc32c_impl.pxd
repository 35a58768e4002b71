# CRC32C in C (crc32c_impl.h, crc32c_impl.c; compiled into the codec module only).
from libc.stdint cimport uint32_t

cdef extern from "crc32c_impl.h":
    void rh_crc32c_init(int force_software) nogil
    int rh_crc32c_hw_active() nogil
    int rh_crc32c_select(int want_hw) nogil
    uint32_t rh_crc32c(uint32_t value, const unsigned char *data, size_t n) nogil
    uint32_t rh_crc32c_software(uint32_t value, const unsigned char *data, size_t n) nogil
