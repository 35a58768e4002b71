# The KVTable's hash table + arena (header-only, kvcore.h). The kvtable,
# logbuffer and scanner modules compile these inline functions; they agree
# because they share this one header and the rh_kv struct lives in the KVTable object.
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from .valcodec cimport rh_num

cdef extern from "kvcore.h":
    enum:
        RH_ENTRY_DEAD
        RH_VALUE_MAX
        RH_ARENA_BASE
    ctypedef struct rh_slot:
        uint64_t hash
        uint64_t off
    ctypedef struct rh_entry:
        uint32_t klen
        uint32_t vlen
        uint32_t vcap
    ctypedef struct rh_kv:
        rh_slot *slots
        uint64_t mask
        uint64_t count
        unsigned char *arena
        uint64_t arena_len
        uint64_t arena_cap
        uint64_t garbage
        uint64_t version
        int defer_huge
        int arena_filemap
    ctypedef struct rh_key:
        int tag
        const unsigned char *body
        size_t len
        uint64_t hash

    uint64_t rh_hash_parts(int tag, const unsigned char *p, size_t n) nogil
    void rh_key_from_bytes(rh_key *k, const unsigned char *kb, size_t klen) nogil
    rh_entry *rh_entry_at(const rh_kv *kv, uint64_t off) nogil
    unsigned char *rh_entry_key(rh_entry *e) nogil
    unsigned char *rh_entry_value(rh_entry *e) nogil
    int64_t rh_find(const rh_kv *kv, const rh_key *k) nogil
    int rh_reserve(rh_kv *kv, uint64_t keys, uint64_t arena_bytes)
    void rh_kv_end_bulk(rh_kv *kv) nogil
    int rh_put(rh_kv *kv, const rh_key *k, const unsigned char *v, size_t vlen,
               size_t vcap_min) nogil
    int rh_delete(rh_kv *kv, const rh_key *k) nogil
    int rh_incr(rh_kv *kv, const rh_key *k, const rh_num *delta, rh_num *cur) nogil
    void rh_clear(rh_kv *kv) nogil
    void rh_compact(rh_kv *kv) nogil
    uint64_t rh_memory_bytes(const rh_kv *kv) nogil
    int64_t rh_next_slot(const rh_kv *kv, uint64_t i) nogil
    # Content digest (docs/FORMAT.md "Digest"); -1 only on a broken invariant.
    uint64_t rh_entry_digest(const rh_entry *e) nogil
    uint64_t rh_digest_finish(uint64_t sum, uint64_t count) nogil
    int rh_kv_digest(const rh_kv *kv, uint64_t *out) nogil

    # Snapshots: the checkpoint's arena copy and the column loader.
    ctypedef struct rh_digest_acc:
        pass
    void rh_digest_acc_init(rh_digest_acc *a) nogil
    uint64_t rh_digest_acc_sum(rh_digest_acc *a) nogil
    const rh_entry *rh_arena_next(const rh_kv *kv, uint64_t *off) nogil
    int rh_arena_prepare(rh_kv *dst, uint64_t bytes) nogil
    int rh_arena_copy(const rh_kv *src, rh_kv *dst) nogil
    int rh_pairs_digest_sum(uint64_t n, const int32_t *koff, const unsigned char *kdata,
                            uint64_t klimit, const int32_t *voff, const unsigned char *vdata,
                            uint64_t vlimit, uint64_t *sum) nogil
    int rh_bulk_load(rh_kv *kv, uint64_t n, const int32_t *koff, const unsigned char *kdata,
                     const int32_t *voff, const unsigned char *vdata, rh_digest_acc *acc) nogil
