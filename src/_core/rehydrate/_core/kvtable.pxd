# The KVTable cdef class, shared with rehydrate._core.frames (which applies
# records straight into .kv). Location: see codec.pxd.
from includes.kvcore cimport rh_kv

cdef class KVTable:
    cdef rh_kv kv
    cdef object __weakref__
