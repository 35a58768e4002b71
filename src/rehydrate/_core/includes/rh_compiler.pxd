# Compiler helpers from rh_compiler.h.
cdef extern from "rh_compiler.h":
    bint RH_LIKELY(bint) nogil
    bint RH_UNLIKELY(bint) nogil
    void RH_PREFETCH(const void *p) nogil
