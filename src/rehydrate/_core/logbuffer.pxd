# The writer's cdef classes (LogBuffer, Staging), as logbuffer.pyx defines them.
from libc.stdint cimport int64_t, uint32_t, uint64_t
from .includes.rhbuf cimport rh_buf
from .includes.kvcore cimport rh_key, rh_kv
from .includes.valcodec cimport rh_num

# One staged record: its key and value bytes live in Staging.data.
ctypedef struct rh_staged:
    uint64_t hash
    size_t koff
    size_t voff
    uint32_t klen
    uint32_t vlen
    uint32_t li
    uint32_t op
    rh_num delta

# Commit's undo log entry (see LogBuffer.commit).
ctypedef struct rh_undo:
    uint32_t kind
    uint32_t had_old
    size_t op_index
    size_t old_off
    size_t old_len
    Py_ssize_t py_index

cdef class Staging:
    cdef readonly list names
    cdef dict _index
    cdef rh_staged *ops
    cdef size_t nops
    cdef size_t ops_cap
    cdef rh_buf data
    cdef readonly Py_ssize_t nbytes
    cdef Py_ssize_t _li(self, object table_name) except -1
    cdef rh_staged *_new_op(self) except NULL
    cdef int _key_into_data(self, const rh_key *k, rh_staged *op) except -1

cdef class LogBuffer:
    cdef int64_t _next_lsn
    cdef int64_t _first_lsn
    cdef rh_buf parts
    cdef rh_buf scratch
    cdef set _used
    cdef object _last_tid
    cdef int64_t _advance(self) noexcept
    cdef int _note_tid(self, object tid) except -1
    cdef int _commit_py(self, rh_staged *op, object t, const unsigned char *data,
                        list py_undo) except -1
    cdef void _rollback(self, Staging staging, list tabs, rh_kv **kvs, rh_undo *undo,
                        size_t n_undo, rh_buf *oldvals, list py_undo) noexcept
