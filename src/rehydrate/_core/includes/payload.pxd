# Frame payload decoding into descriptors (header-only, payload.h).
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

cdef extern from "payload.h":
    enum:
        RH_TID_SPACE
    enum rh_perr_code:
        RH_P_OK
        RH_P_DECL_COUNT
        RH_P_DECL
        RH_P_DECL_NAME
        RH_P_TOO_MANY
        RH_P_UNDECLARED
        RH_P_KEY_LEN
        RH_P_VALUE_LEN
        RH_P_UNKNOWN_OP
        RH_P_MALFORMED
        RH_P_COUNT
        RH_P_NOMEM
        RH_P_CANCELLED
        RH_P_OFFSETS_COUNT
        RH_P_OFFSETS_NAME
    ctypedef struct rh_decl:
        uint32_t tid
        uint32_t nlen
        unsigned kind
        uint32_t slen
        uint32_t version
        const unsigned char *name
        const unsigned char *schema
    ctypedef struct rh_rec:
        uint64_t hash
        const unsigned char *key
        const unsigned char *val
        uint32_t klen
        uint32_t vlen
        uint32_t tid
        uint32_t op
        void *kv
        void *obj
        void *num
    ctypedef struct rh_decoded:
        rh_decl *decls
        size_t ndecls
        size_t decl_cap
        rh_rec *recs
        size_t nrecs
        size_t rec_cap
    void rh_decoded_free(rh_decoded *d) nogil
    int rh_key_wellformed(const unsigned char *kb, size_t n) nogil
    int rh_skip_offsets(const unsigned char *p, size_t n, size_t *used) nogil
    int rh_decode_payload(const unsigned char *p, size_t n, int64_t count,
                          uint8_t *known, rh_decoded *out, int64_t *arg,
                          const char *cancel) nogil
