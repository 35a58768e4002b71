# What the scanner shares of rehydrate._core.decoder: the fault messages and
# the table-id bitmap a frame's records are checked against.
from libc.stdint cimport int64_t, uint8_t

cdef str offsets_problem_text(int code)
cdef str payload_problem_text(int code, int64_t arg, object count)
# Sets the bit of every id in tids (ints in 0..RH_TID_SPACE-1; others are
# ignored) in known, RH_TID_SPACE bits, cleared first.
cdef int mark_known(uint8_t *known, object tids) except -1
