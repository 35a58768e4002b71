/* Decoding a frame's raw payload into declaration and record descriptors.
 *
 * Payload grammar (docs/FORMAT.md): varint ndecls, ndecls x (varint tid, u8
 * kind, varint name_len, name, and for kind 4 varint schema_len, schema, and
 * when kind has bit 0x80 varint version >= 2), then records: u8 op, varint
 * tid, varint key_len, key, varint value_len, value. The decoder checks every
 * record's structure before replay applies any of them (a frame is all or
 * nothing) and reports the first fault as a code + argument; decoder.pyx turns
 * that into the same message the pure twin's decode_payload raises.
 */
#ifndef RH_PAYLOAD_H
#define RH_PAYLOAD_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rh_compiler.h"
#include "rhbuf.h"
#include "kvcore.h"
#include "valcodec.h"

#define RH_TID_SPACE 65536u  /* MAX_TABLE_ID + 1 */
#define RH_DECL_VERSION_FLAG 0x80u  /* DECL_VERSION_FLAG: a version follows */
#define RH_DECL_KIND_MASK 0x7Fu     /* DECL_KIND_MASK */

typedef struct {
    uint32_t tid;
    uint32_t nlen;
    unsigned kind;
    uint32_t slen;                /* schema bytes: kind 4 (numeric) only, else 0 */
    uint32_t version;             /* 2..2^32-1 when declared, else 1 */
    const unsigned char *name;
    const unsigned char *schema;
} rh_decl;

/* One record, as replay needs it: pointers into the payload, the key's hash
 * (computed while decoding, off the GIL), and the table it resolves to. */
typedef struct {
    uint64_t hash;
    const unsigned char *key;
    const unsigned char *val;
    uint32_t klen;
    uint32_t vlen;
    uint32_t tid;
    uint32_t op;
    void *kv;   /* rh_kv* of a native table, else NULL (set by the apply step) */
    void *obj;  /* borrowed table object (set by the apply step) */
    void *num;  /* rh_numtab* of a numeric table, else NULL (set by the apply step) */
} rh_rec;

enum rh_perr_code {
    RH_P_OK = 0,
    RH_P_DECL_COUNT,   /* "bad declaration count" */
    RH_P_DECL,         /* "bad table declaration" */
    RH_P_DECL_NAME,    /* "bad table name length" */
    RH_P_TOO_MANY,     /* "payload holds more records than its header counts" */
    RH_P_UNDECLARED,   /* "record uses undeclared table id {arg}" */
    RH_P_KEY_LEN,      /* "bad key length" */
    RH_P_VALUE_LEN,    /* "bad value length" */
    RH_P_UNKNOWN_OP,   /* "unknown op {arg}" */
    RH_P_MALFORMED,    /* "malformed record for op {arg}" */
    RH_P_COUNT,        /* "payload holds {arg} records, header says {count}" */
    RH_P_NOMEM,
    RH_P_CANCELLED,
    RH_P_OFFSETS_COUNT, /* "bad source offsets count" */
    RH_P_OFFSETS_NAME,  /* "bad source name length" */
};

typedef struct {
    rh_decl *decls;
    size_t ndecls, decl_cap;
    rh_rec *recs;
    size_t nrecs, rec_cap;
} rh_decoded;

static inline void rh_decoded_free(rh_decoded *d)
{
    free(d->decls);
    free(d->recs);
    memset(d, 0, sizeof(*d));
}

static inline int rh_known(const uint8_t *known, int64_t tid)
{
    return tid >= 0 && tid < (int64_t)RH_TID_SPACE && (known[tid >> 3] >> (tid & 7)) & 1;
}

static inline int rh_key_wellformed(const unsigned char *kb, size_t n)
{
    if (n < 1)
        return 0;
    if (kb[0] == 0x03)
        return n == 9;
    return kb[0] == 0x01 || kb[0] == 0x02;
}

static int rh_grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    void *p = realloc(*arr, c * elem);
    if (!p)
        return -1;
    *arr = p;
    *cap = c;
    return 0;
}

/* The size of the source offsets section at the start of a payload:
 * varint count (1..65536), then count x (varint name_len (1..1024), name,
 * int64). Checks lengths and bounds only; the order and UTF-8 of the names
 * are checked by the shared Python parser (rehydrate/_offsets.py). */
static int rh_skip_offsets(const unsigned char *p, size_t n, size_t *used)
{
    size_t i = 0;
    int64_t count = rh_read_varint(p, &i, n);
    if (count < 1 || count > 65536)
        return RH_P_OFFSETS_COUNT;
    for (int64_t e = 0; e < count; e++) {
        int64_t nlen = rh_read_varint(p, &i, n);
        if (nlen < 1 || nlen > 1024 || i + (size_t)nlen + 8 > n)
            return RH_P_OFFSETS_NAME;
        i += (size_t)nlen + 8;
    }
    *used = i;
    return RH_P_OK;
}

/* Decodes p[0, n). `count` is the header's record count (any int64: a value
 * no record list can have simply never matches). `known` is the segment's
 * declared-tid bitmap (RH_TID_SPACE bits); this payload's declarations are
 * added to it. `cancel`, when not NULL, is polled every 8192 records.
 * Returns RH_P_OK or a code with *arg set. */
static int rh_decode_payload(const unsigned char *p, size_t n, int64_t count,
                             uint8_t *known, rh_decoded *out, int64_t *arg,
                             volatile const char *cancel)
{
    size_t i = 0;
    out->ndecls = out->nrecs = 0;
    int64_t nd = rh_read_varint(p, &i, n);
    if (nd < 0 || nd > (int64_t)RH_TID_SPACE)
        return RH_P_DECL_COUNT;
    if (rh_grow((void **)&out->decls, &out->decl_cap, (size_t)nd + 1, sizeof(rh_decl)) < 0)
        return RH_P_NOMEM;
    for (int64_t d = 0; d < nd; d++) {
        int64_t tid = rh_read_varint(p, &i, n);
        if (tid < 0 || tid > (int64_t)RH_TID_SPACE - 1 || i >= n)
            return RH_P_DECL;
        unsigned kbyte = p[i++];
        unsigned kind = kbyte & RH_DECL_KIND_MASK;
        int64_t nlen = rh_read_varint(p, &i, n);
        if (nlen < 1 || nlen > 255 || i + (size_t)nlen > n)
            return RH_P_DECL_NAME;
        rh_decl *dc = &out->decls[out->ndecls++];
        dc->tid = (uint32_t)tid;
        dc->kind = kind;
        dc->name = p + i;
        dc->nlen = (uint32_t)nlen;
        i += (size_t)nlen;
        dc->schema = NULL;
        dc->slen = 0;
        if (kind == 4) { /* KIND_NUMERIC: then its schema (msgpack), checked in Python */
            int64_t slen = rh_read_varint(p, &i, n);
            if (slen < 1 || slen > 65536 || i + (size_t)slen > n)
                return RH_P_DECL;
            dc->schema = p + i;
            dc->slen = (uint32_t)slen;
            i += (size_t)slen;
        }
        dc->version = 1;
        if (kbyte & RH_DECL_VERSION_FLAG) { /* then the table's version, >= 2 */
            int64_t version = rh_read_varint(p, &i, n);
            if (version < 2)
                return RH_P_DECL;
            dc->version = (uint32_t)version;
        }
        known[tid >> 3] |= (uint8_t)(1u << (tid & 7));
    }
    /* Each record takes at least 4 bytes, which bounds the array we need. */
    size_t guess = (n - i) / 4 + 1;
    if (count >= 0 && (uint64_t)count < guess)
        guess = (size_t)count + 1;
    if (rh_grow((void **)&out->recs, &out->rec_cap, guess, sizeof(rh_rec)) < 0)
        return RH_P_NOMEM;
    size_t nrec = 0;
    while (i < n) {
        if ((int64_t)nrec == count) {
            out->nrecs = nrec;
            return RH_P_TOO_MANY;
        }
        if (RH_UNLIKELY((nrec & 8191) == 8191) && cancel && *cancel) {
            out->nrecs = nrec;
            return RH_P_CANCELLED;
        }
        unsigned op = p[i++];
        int64_t tid = rh_read_varint(p, &i, n);
        /* A no-op (op 5) names no table: its id 0 need not be declared. */
        if (tid < 0 || (op != 5 && !rh_known(known, tid))) {
            *arg = tid;
            out->nrecs = nrec;
            return RH_P_UNDECLARED;
        }
        int64_t klen = rh_read_varint(p, &i, n);
        if (klen < 0 || klen > 1024 * 1024 || i + (size_t)klen > n) {
            out->nrecs = nrec;
            return RH_P_KEY_LEN;
        }
        const unsigned char *kb = p + i;
        i += (size_t)klen;
        int64_t vlen = rh_read_varint(p, &i, n);
        if (vlen < 0 || i + (size_t)vlen > n) {
            out->nrecs = nrec;
            return RH_P_VALUE_LEN;
        }
        const unsigned char *vb = p + i;
        i += (size_t)vlen;
        int ok;
        rh_num num;
        switch (op) {
        case 4: ok = klen == 0 && vlen == 0; break;            /* OP_CLEAR */
        case 1: ok = rh_key_wellformed(kb, (size_t)klen) && vlen >= 1; break; /* OP_PUT */
        case 2: ok = rh_key_wellformed(kb, (size_t)klen) && vlen == 0; break; /* OP_DELETE */
        case 3: ok = rh_key_wellformed(kb, (size_t)klen) &&                   /* OP_INCR */
                     rh_decode_number(vb, (size_t)vlen, &num); break;
        case 5: ok = tid == 0 && klen == 0 && vlen == 0; break;             /* OP_NOOP */
        case 6: ok = (klen == 0 || rh_key_wellformed(kb, (size_t)klen)) &&   /* OP_CUSTOM */
                     vlen >= 1; break;
        default:
            *arg = op;
            out->nrecs = nrec;
            return RH_P_UNKNOWN_OP;
        }
        if (!ok) {
            *arg = op;
            out->nrecs = nrec;
            return RH_P_MALFORMED;
        }
        if (nrec == out->rec_cap &&
            rh_grow((void **)&out->recs, &out->rec_cap, nrec + 1, sizeof(rh_rec)) < 0)
            return RH_P_NOMEM;
        rh_rec *r = &out->recs[nrec++];
        r->op = op;
        r->tid = (uint32_t)tid;
        r->key = kb;
        r->klen = (uint32_t)klen;
        r->val = vb;
        r->vlen = (uint32_t)vlen;
        r->kv = NULL;
        r->obj = NULL;
        r->num = NULL;
        if (op != 4) {
            /* Hashing here, off the GIL, keeps the apply loop to probes. */
            rh_key k;
            rh_key_from_bytes(&k, kb, (size_t)klen);
            r->hash = k.hash;
        } else {
            r->hash = 0;
        }
    }
    out->nrecs = nrec;
    if ((int64_t)nrec != count) {
        *arg = (int64_t)nrec;
        return RH_P_COUNT;
    }
    return RH_P_OK;
}

#endif
