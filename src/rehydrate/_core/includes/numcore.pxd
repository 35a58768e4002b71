# Replay of NumericTable records without the GIL (numcore.h).
from libc.stdint cimport uint32_t, uint64_t
from .payload cimport rh_rec

cdef extern from "numcore.h":
    ctypedef struct rh_numtab:
        uint64_t rows
        uint32_t ncols
        const unsigned char **names
        uint32_t *nlens
        unsigned char *is_float
        void **cols
    size_t rh_num_apply_run(rh_rec *recs, size_t n) nogil
