/* Replay of NumericTable records without the GIL.
 *
 * A numeric table's records (docs/tables.md): put (op 1) with an int row key
 * and a msgpack map {column name: number}, delete (op 2) zeroing a row, clear
 * (op 4) zeroing every row. rh_numtab describes the table's numpy columns
 * (int64 or float64, `rows` long); replay applies a record here when it is
 * exactly what a writer produces and in range, and otherwise returns 0 so
 * the caller hands the record to the Python table, which applies it or says
 * precisely what is wrong. Nothing here allocates or calls Python.
 */
#ifndef RH_NUMCORE_H
#define RH_NUMCORE_H
#include <stdint.h>
#include <string.h>
#include "payload.h"

#define RH_NUM_MAX_CELLS 64 /* cells one put sets natively; more go to Python */

typedef struct {
    uint64_t rows;
    uint32_t ncols;
    const unsigned char **names; /* UTF-8 column names */
    uint32_t *nlens;
    unsigned char *is_float;     /* 1: float64 column, 0: int64 */
    void **cols;                 /* int64_t* or double*, rows long */
} rh_numtab;

static inline uint64_t rh_be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* The row of an int key (tag 0x03 + int64 LE), or -1 when it is not one
 * in 0..rows-1. */
static inline int64_t rh_num_row(const rh_numtab *t, const unsigned char *key, uint32_t klen)
{
    if (klen != 9 || key[0] != 0x03)
        return -1;
    uint64_t u = 0;
    for (int i = 8; i >= 1; i--)
        u = (u << 8) | key[i];
    if ((int64_t)u < 0 || u >= t->rows)
        return -1;
    return (int64_t)u;
}

/* One msgpack number at p[0, end): 1 for an int (*iv), 2 for a float (*dv),
 * 0 for anything else; *used gets its size. */
static inline int rh_mp_number(const unsigned char *p, const unsigned char *end, int64_t *iv,
                               double *dv, size_t *used)
{
    if (p >= end)
        return 0;
    unsigned char b = *p;
    if (b <= 0x7f) { *iv = b; *used = 1; return 1; }
    if (b >= 0xe0) { *iv = (int8_t)b; *used = 1; return 1; }
    int n;
    switch (b) {
    case 0xcc: n = 1; break;
    case 0xcd: n = 2; break;
    case 0xce: n = 4; break;
    case 0xcf: n = 8; break;
    case 0xd0: n = 1; break;
    case 0xd1: n = 2; break;
    case 0xd2: n = 4; break;
    case 0xd3: n = 8; break;
    case 0xca: n = 4; break;
    case 0xcb: n = 8; break;
    default: return 0;
    }
    if (end - p < 1 + n)
        return 0;
    uint64_t u = rh_be(p + 1, n);
    *used = (size_t)(1 + n);
    if (b == 0xcb) {
        memcpy(dv, &u, 8);
        return 2;
    }
    if (b == 0xca) {
        uint32_t u32 = (uint32_t)u;
        float f;
        memcpy(&f, &u32, 4);
        *dv = f;
        return 2;
    }
    if (b <= 0xcf) { /* unsigned */
        if (u > (uint64_t)INT64_MAX)
            return 0;
        *iv = (int64_t)u;
        return 1;
    }
    /* signed: sign-extend n bytes */
    int shift = 64 - 8 * n;
    *iv = (int64_t)(u << shift) >> shift;
    return 1;
}

/* Applies a put record when it is well formed and in range: 1, else 0 (and
 * nothing set). Every cell is checked before any is set. */
static int rh_num_put(const rh_numtab *t, const unsigned char *key, uint32_t klen,
                      const unsigned char *v, uint32_t vlen)
{
    int64_t row = rh_num_row(t, key, klen);
    const unsigned char *p = v, *end = v + vlen;
    uint32_t n;
    uint32_t col[RH_NUM_MAX_CELLS];
    int64_t ival[RH_NUM_MAX_CELLS];
    double dval[RH_NUM_MAX_CELLS];
    if (row < 0 || vlen < 1)
        return 0;
    if ((*p & 0xf0) == 0x80) {
        n = *p & 0x0f;
        p += 1;
    } else if (*p == 0xde && vlen >= 3) {
        n = (uint32_t)rh_be(p + 1, 2);
        p += 3;
    } else {
        return 0;
    }
    if (n == 0 || n > RH_NUM_MAX_CELLS)
        return 0;
    for (uint32_t c = 0; c < n; c++) {
        if (p >= end)
            return 0;
        size_t slen;
        unsigned char b = *p;
        if ((b & 0xe0) == 0xa0) {
            slen = b & 0x1f;
            p += 1;
        } else if (b == 0xd9 && end - p >= 2) {
            slen = p[1];
            p += 2;
        } else if (b == 0xda && end - p >= 3) {
            slen = (size_t)rh_be(p + 1, 2);
            p += 3;
        } else {
            return 0;
        }
        if ((size_t)(end - p) < slen)
            return 0;
        uint32_t j = 0;
        while (j < t->ncols && !(t->nlens[j] == slen && memcmp(t->names[j], p, slen) == 0))
            j++;
        if (j == t->ncols)
            return 0;
        p += slen;
        size_t used;
        int64_t iv = 0;
        double dv = 0;
        int kind = rh_mp_number(p, end, &iv, &dv, &used);
        if (kind == 0 || (kind == 2 && !t->is_float[j]))
            return 0; /* not a number, or a float for an int64 column */
        p += used;
        col[c] = j;
        ival[c] = iv;
        dval[c] = kind == 2 ? dv : (double)iv;
    }
    if (p != end)
        return 0;
    for (uint32_t c = 0; c < n; c++) {
        uint32_t j = col[c];
        if (t->is_float[j])
            ((double *)t->cols[j])[row] = dval[c];
        else
            ((int64_t *)t->cols[j])[row] = ival[c];
    }
    return 1;
}

static int rh_num_delete(const rh_numtab *t, const unsigned char *key, uint32_t klen)
{
    int64_t row = rh_num_row(t, key, klen);
    if (row < 0)
        return 0;
    for (uint32_t j = 0; j < t->ncols; j++) {
        if (t->is_float[j])
            ((double *)t->cols[j])[row] = 0.0;
        else
            ((int64_t *)t->cols[j])[row] = 0;
    }
    return 1;
}

static void rh_num_clear(const rh_numtab *t)
{
    for (uint32_t j = 0; j < t->ncols; j++)
        memset(t->cols[j], 0, t->rows * 8); /* 0.0 is all zero bits too */
}

/* The cells of the row a record RH_NUM_AHEAD further on will touch are
 * fetched ahead: rows are random, so each cell is otherwise a cache miss
 * (measured at 2M random puts over 1M rows: 41 M ops/s without), and
 * fetched for writing, so the store does not wait for the line either. */
#define RH_NUM_AHEAD 24
static inline void rh_num_prefetch(const rh_rec *r)
{
    const rh_numtab *t = (const rh_numtab *)r->num;
    if (t == NULL || r->klen != 9)
        return;
    int64_t row = rh_num_row(t, r->key, r->klen);
    if (row < 0)
        return;
    for (uint32_t j = 0; j < t->ncols && j < 4; j++)
        __builtin_prefetch((const char *)t->cols[j] + 8 * (uint64_t)row, 1, 3); /* for a write */
}

/* Applies records [0, n) whose r->num is set (NOOPs are skipped) until one
 * cannot be applied here; returns how many were applied. */
static size_t rh_num_apply_run(rh_rec *recs, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        rh_rec *r = &recs[i];
        if (i + RH_NUM_AHEAD < n)
            rh_num_prefetch(&recs[i + RH_NUM_AHEAD]);
        if (r->op == 5) /* OP_NOOP */
            continue;
        const rh_numtab *t = (const rh_numtab *)r->num;
        if (t == NULL)
            break;
        if (r->op == 1) {
            if (!rh_num_put(t, r->key, r->klen, r->val, r->vlen))
                break;
        } else if (r->op == 2) {
            if (!rh_num_delete(t, r->key, r->klen))
                break;
        } else if (r->op == 4) {
            rh_num_clear(t);
        } else {
            break;
        }
    }
    return i;
}

#endif
