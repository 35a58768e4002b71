/* XXH64 (xxHash, 64-bit), written from the public algorithm description
 * (github.com/Cyan4973/xxHash, doc/xxhash_spec.md). It must give exactly the
 * values the `xxhash` package gives, because the pure twin uses that package
 * and a table digest is compared across cores and machines; so every load is
 * an explicit little-endian read, whatever the host's byte order.
 *
 * Why our own copy: the digest walks a table's arena without the GIL and
 * hashes tens of millions of short entries; a call into a Python module per
 * entry is out of the question, and vendoring xxhash.h (a large multi-variant
 * header) for one function is more code to audit than this.
 *
 * Three forms: rh_xxh64() for a contiguous buffer, a streaming state
 * (rh_xxh64_reset / _update / _digest) for input that arrives in pieces, and
 * rh_xxh64_x4() for four short inputs at once. All run without the GIL and
 * cannot fail.
 */
#ifndef RH_XXH64_H
#define RH_XXH64_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define RH_XXH_P1 0x9E3779B185EBCA87ull
#define RH_XXH_P2 0xC2B2AE3D27D4EB4Full
#define RH_XXH_P3 0x165667B19E3779F9ull
#define RH_XXH_P4 0x85EBCA77C2B2AE63ull
#define RH_XXH_P5 0x27D4EB2F165667C5ull

static inline uint64_t rh_xxh_rotl(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

/* memcpy, not a cast: the input has no alignment (arena keys start at any
 * byte), and the compiler turns a fixed-size memcpy into one load. */
static inline uint64_t rh_xxh_le64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline uint32_t rh_xxh_le32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

static inline uint64_t rh_xxh_round(uint64_t acc, uint64_t input)
{
    acc += input * RH_XXH_P2;
    acc = rh_xxh_rotl(acc, 31);
    return acc * RH_XXH_P1;
}

static inline uint64_t rh_xxh_merge(uint64_t h, uint64_t v)
{
    h ^= rh_xxh_round(0, v);
    return h * RH_XXH_P1 + RH_XXH_P4;
}

static inline uint64_t rh_xxh_avalanche(uint64_t h)
{
    h ^= h >> 33;
    h *= RH_XXH_P2;
    h ^= h >> 29;
    h *= RH_XXH_P3;
    h ^= h >> 32;
    return h;
}

/* The four lanes after whole 32-byte stripes, folded into one. */
static inline uint64_t rh_xxh_converge(const uint64_t v[4])
{
    uint64_t h = rh_xxh_rotl(v[0], 1) + rh_xxh_rotl(v[1], 7) + rh_xxh_rotl(v[2], 12) +
                 rh_xxh_rotl(v[3], 18);
    h = rh_xxh_merge(h, v[0]);
    h = rh_xxh_merge(h, v[1]);
    h = rh_xxh_merge(h, v[2]);
    return rh_xxh_merge(h, v[3]);
}

static inline void rh_xxh_init_lanes(uint64_t v[4], uint64_t seed)
{
    v[0] = seed + RH_XXH_P1 + RH_XXH_P2;
    v[1] = seed + RH_XXH_P2;
    v[2] = seed;
    v[3] = seed - RH_XXH_P1;
}

/* Consumes whole stripes from p; returns the bytes it used (a multiple of 32). */
static inline size_t rh_xxh_stripes(uint64_t v[4], const unsigned char *p, size_t n)
{
    size_t used = 0;
    /* Locals, not v[]: keeps the four lanes in registers across the loop. */
    uint64_t a = v[0], b = v[1], c = v[2], d = v[3];
    while (n - used >= 32) {
        a = rh_xxh_round(a, rh_xxh_le64(p + used));
        b = rh_xxh_round(b, rh_xxh_le64(p + used + 8));
        c = rh_xxh_round(c, rh_xxh_le64(p + used + 16));
        d = rh_xxh_round(d, rh_xxh_le64(p + used + 24));
        used += 32;
    }
    v[0] = a;
    v[1] = b;
    v[2] = c;
    v[3] = d;
    return used;
}

/* The last n (< 32) bytes, then the avalanche. */
static inline uint64_t rh_xxh_finish(uint64_t h, const unsigned char *p, size_t n)
{
    while (n >= 8) {
        h ^= rh_xxh_round(0, rh_xxh_le64(p));
        h = rh_xxh_rotl(h, 27) * RH_XXH_P1 + RH_XXH_P4;
        p += 8;
        n -= 8;
    }
    if (n >= 4) {
        h ^= (uint64_t)rh_xxh_le32(p) * RH_XXH_P1;
        h = rh_xxh_rotl(h, 23) * RH_XXH_P2 + RH_XXH_P3;
        p += 4;
        n -= 4;
    }
    while (n) {
        h ^= (uint64_t)(*p) * RH_XXH_P5;
        h = rh_xxh_rotl(h, 11) * RH_XXH_P1;
        p++;
        n--;
    }
    return rh_xxh_avalanche(h);
}

static inline uint64_t rh_xxh64(const void *data, size_t n, uint64_t seed)
{
    const unsigned char *p = (const unsigned char *)data;
    uint64_t h;
    size_t used = 0;
    if (n >= 32) {
        uint64_t v[4];
        rh_xxh_init_lanes(v, seed);
        used = rh_xxh_stripes(v, p, n);
        h = rh_xxh_converge(v);
    } else {
        h = seed + RH_XXH_P5;
    }
    h += (uint64_t)n;
    return rh_xxh_finish(h, p + used, n - used);
}

/* ---- streaming ----------------------------------------------------------- */

typedef struct {
    uint64_t total;          /* bytes fed so far */
    uint64_t seed;
    uint64_t v[4];
    unsigned char buf[32];   /* a partial stripe carried to the next update */
    size_t buffered;
} rh_xxh64_state;

static inline void rh_xxh64_reset(rh_xxh64_state *s, uint64_t seed)
{
    s->total = 0;
    s->seed = seed;
    rh_xxh_init_lanes(s->v, seed);
    s->buffered = 0;
}

static inline void rh_xxh64_update(rh_xxh64_state *s, const void *data, size_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    s->total += n;
    if (s->buffered) {
        size_t take = 32 - s->buffered;
        if (take > n)
            take = n;
        memcpy(s->buf + s->buffered, p, take);
        s->buffered += take;
        p += take;
        n -= take;
        if (s->buffered < 32)
            return;
        rh_xxh_stripes(s->v, s->buf, 32);
        s->buffered = 0;
    }
    size_t used = rh_xxh_stripes(s->v, p, n);
    memcpy(s->buf, p + used, n - used);
    s->buffered = n - used;
}

static inline uint64_t rh_xxh64_digest(const rh_xxh64_state *s)
{
    /* Lanes are used only once a whole stripe went through them: the
     * one-shot form makes the same choice from the total length. */
    uint64_t h = s->total >= 32 ? rh_xxh_converge(s->v) : s->seed + RH_XXH_P5;
    h += s->total;
    return rh_xxh_finish(h, s->buf, s->buffered);
}

/* ---- four at a time ------------------------------------------------------
 * XXH64 of four independent inputs, the same values as four rh_xxh64 calls.
 * A short input's hash is one long chain of dependent multiplies (~100
 * cycles), and one call after another leaves the core mostly waiting on it;
 * written step by step across four inputs, each step offers four
 * independent chains, and a table digest of short entries runs ~2x faster.
 * Each phase loops to the longest of the four; an input with fewer steps
 * sits them out (inputs of similar length, the common case, all take the
 * same branches). */
static inline void rh_xxh64_x4(const unsigned char *const p[4], const size_t n[4],
                               uint64_t seed, uint64_t out[4])
{
    uint64_t h[4], v[4][4];
    size_t off[4], stripes[4], t8[4], most = 0;
    int j;
    for (j = 0; j < 4; j++) {
        stripes[j] = n[j] / 32;
        if (stripes[j] > most)
            most = stripes[j];
        rh_xxh_init_lanes(v[j], seed);
    }
    for (size_t s = 0; s < most; s++) {
        for (j = 0; j < 4; j++) {
            if (s < stripes[j]) {
                const unsigned char *q = p[j] + 32 * s;
                v[j][0] = rh_xxh_round(v[j][0], rh_xxh_le64(q));
                v[j][1] = rh_xxh_round(v[j][1], rh_xxh_le64(q + 8));
                v[j][2] = rh_xxh_round(v[j][2], rh_xxh_le64(q + 16));
                v[j][3] = rh_xxh_round(v[j][3], rh_xxh_le64(q + 24));
            }
        }
    }
    most = 0;
    for (j = 0; j < 4; j++) {
        h[j] = (stripes[j] ? rh_xxh_converge(v[j]) : seed + RH_XXH_P5) + (uint64_t)n[j];
        off[j] = stripes[j] * 32;
        t8[j] = (n[j] % 32) / 8;
        if (t8[j] > most)
            most = t8[j];
    }
    for (size_t t = 0; t < most; t++) {
        for (j = 0; j < 4; j++) {
            if (t < t8[j]) {
                h[j] ^= rh_xxh_round(0, rh_xxh_le64(p[j] + off[j]));
                h[j] = rh_xxh_rotl(h[j], 27) * RH_XXH_P1 + RH_XXH_P4;
                off[j] += 8;
            }
        }
    }
    for (j = 0; j < 4; j++) {
        if (n[j] & 4) {
            h[j] ^= (uint64_t)rh_xxh_le32(p[j] + off[j]) * RH_XXH_P1;
            h[j] = rh_xxh_rotl(h[j], 23) * RH_XXH_P2 + RH_XXH_P3;
            off[j] += 4;
        }
    }
    for (size_t b = 0; b < 3; b++) {
        for (j = 0; j < 4; j++) {
            if (b < (n[j] & 3)) {
                h[j] ^= (uint64_t)p[j][off[j] + b] * RH_XXH_P5;
                h[j] = rh_xxh_rotl(h[j], 11) * RH_XXH_P1;
            }
        }
    }
    for (j = 0; j < 4; j++)
        out[j] = rh_xxh_avalanche(h[j]);
}

#endif
