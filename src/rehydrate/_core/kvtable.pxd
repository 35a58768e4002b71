# The KVTable cdef class, shared with the writer (logbuffer) and replay
# (scanner), which apply records straight into .kv.
from libc.stdint cimport int32_t
from .includes.kvcore cimport rh_kv

cdef class KVTable:
    cdef rh_kv kv
    cdef object __weakref__
    # The store's lock for to_arrow's copy (set by Store.table).
    cdef public object _export_lock
    cdef _load_views(self, const int32_t[::1] koff, const unsigned char[::1] kdata,
                     const int32_t[::1] voff, const unsigned char[::1] vdata, bint summed)
    cdef _put_batch(self, list keys, list values, packer)
