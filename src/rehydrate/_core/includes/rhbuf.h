/* A growable byte buffer (malloc-based, so it can grow without the GIL). */
#ifndef RH_BUF_H
#define RH_BUF_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rh_compiler.h"

typedef struct {
    unsigned char *data;
    size_t len;
    size_t cap;
} rh_buf;

/* 0, or -1 when out of memory (the buffer is unchanged then). */
static inline int rh_buf_reserve(rh_buf *b, size_t extra)
{
    if (RH_LIKELY(b->cap - b->len >= extra))
        return 0;
    size_t need = b->len + extra;
    if (need < b->len)
        return -1;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap + cap / 2 + 64;
    unsigned char *p = (unsigned char *)realloc(b->data, cap);
    if (!p)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

static inline void rh_buf_free(rh_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* Writers below assume the caller reserved room (at most 10 bytes a varint). */
static inline void rh_buf_put_byte(rh_buf *b, unsigned char c) { b->data[b->len++] = c; }

static inline void rh_buf_put_bytes(rh_buf *b, const void *p, size_t n)
{
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

/* Unsigned LEB128, the format's varint (the format reads at most 5 bytes). */
static inline void rh_buf_put_varint(rh_buf *b, uint64_t v)
{
    unsigned char *p = b->data + b->len;
    while (v >= 0x80) {
        *p++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *p++ = (unsigned char)v;
    b->len = (size_t)(p - b->data);
}

static inline size_t rh_varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* The format's varint reader: at most 5 bytes, minimal, value <= 0xFFFFFFFF.
 * Returns the value, or -1 (and leaves *pos) on a truncated, overlong,
 * non-minimal or too large varint. */
static inline int64_t rh_read_varint(const unsigned char *p, size_t *pos, size_t end)
{
    size_t i = *pos;
    uint64_t result = 0;
    unsigned shift = 0;
    while (i < end && shift <= 28) {
        unsigned b = p[i++];
        result |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            if ((b == 0 && shift > 0) || result > 0xFFFFFFFFull)
                return -1;
            *pos = i;
            return (int64_t)result;
        }
        shift += 7;
    }
    return -1;
}

#endif
