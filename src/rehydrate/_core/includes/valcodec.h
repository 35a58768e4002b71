/* msgpack numbers: the part of the value codec that replay and incr need in C.
 *
 * Encodings are byte-identical to msgpack-python's Packer (ints in the
 * smallest type, non-negative ints as unsigned types, floats as float64), so
 * both cores write the same log.
 */
#ifndef RH_VALCODEC_H
#define RH_VALCODEC_H
#include <stdint.h>
#include <string.h>

enum { RH_NUM_I64 = 1, RH_NUM_U64 = 2, RH_NUM_F64 = 3 };

/* A msgpack number as Python sees it: an int (int64, or uint64 above
 * INT64_MAX) or a float. */
typedef struct {
    int kind;
    int64_t i;
    uint64_t u;
    double d;
} rh_num;

enum {
    RH_INCR_OK = 0,
    RH_INCR_NOT_NUMBER = 1,  /* stored value is not a msgpack number */
    RH_INCR_OUT_OF_INT64 = 2,/* stored int above INT64_MAX */
    RH_INCR_OVERFLOW = 3,    /* int result outside int64 */
};

#define RH_NUM_MAX_BYTES 9

static inline uint16_t rh_be16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t rh_be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t rh_be64(const unsigned char *p)
{
    return ((uint64_t)rh_be32(p) << 32) | rh_be32(p + 4);
}
static inline void rh_put_be16(unsigned char *p, uint16_t v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }
static inline void rh_put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}
static inline void rh_put_be64(unsigned char *p, uint64_t v)
{
    rh_put_be32(p, (uint32_t)(v >> 32));
    rh_put_be32(p + 4, (uint32_t)v);
}

static inline void rh_num_set_u64(rh_num *n, uint64_t v)
{
    if (v <= (uint64_t)INT64_MAX) { n->kind = RH_NUM_I64; n->i = (int64_t)v; }
    else { n->kind = RH_NUM_U64; n->u = v; }
}

/* The pure twin's decode_number: 1 and *out when p[0, n) is exactly one msgpack
 * number (bool is not a number), else 0. */
static inline int rh_decode_number(const unsigned char *p, size_t n, rh_num *out)
{
    if (n == 0)
        return 0;
    unsigned b = p[0];
    if (b <= 0x7F) { if (n != 1) return 0; out->kind = RH_NUM_I64; out->i = b; return 1; }
    if (b >= 0xE0) { if (n != 1) return 0; out->kind = RH_NUM_I64; out->i = (int8_t)b; return 1; }
    switch (b) {
    case 0xCA: {
        if (n != 5) return 0;
        uint32_t w = rh_be32(p + 1);
        float f;
        memcpy(&f, &w, 4);
        out->kind = RH_NUM_F64; out->d = (double)f; return 1;
    }
    case 0xCB: {
        if (n != 9) return 0;
        uint64_t w = rh_be64(p + 1);
        memcpy(&out->d, &w, 8);
        out->kind = RH_NUM_F64; return 1;
    }
    case 0xCC: if (n != 2) return 0; rh_num_set_u64(out, p[1]); return 1;
    case 0xCD: if (n != 3) return 0; rh_num_set_u64(out, rh_be16(p + 1)); return 1;
    case 0xCE: if (n != 5) return 0; rh_num_set_u64(out, rh_be32(p + 1)); return 1;
    case 0xCF: if (n != 9) return 0; rh_num_set_u64(out, rh_be64(p + 1)); return 1;
    case 0xD0: if (n != 2) return 0; out->kind = RH_NUM_I64; out->i = (int8_t)p[1]; return 1;
    case 0xD1: if (n != 3) return 0; out->kind = RH_NUM_I64; out->i = (int16_t)rh_be16(p + 1); return 1;
    case 0xD2: if (n != 5) return 0; out->kind = RH_NUM_I64; out->i = (int32_t)rh_be32(p + 1); return 1;
    case 0xD3: if (n != 9) return 0; out->kind = RH_NUM_I64; out->i = (int64_t)rh_be64(p + 1); return 1;
    default: return 0;
    }
}

static inline size_t rh_pack_u64(uint64_t v, unsigned char *out)
{
    if (v < 0x80) { out[0] = (unsigned char)v; return 1; }
    if (v < 0x100) { out[0] = 0xCC; out[1] = (unsigned char)v; return 2; }
    if (v < 0x10000) { out[0] = 0xCD; rh_put_be16(out + 1, (uint16_t)v); return 3; }
    if (v < 0x100000000ull) { out[0] = 0xCE; rh_put_be32(out + 1, (uint32_t)v); return 5; }
    out[0] = 0xCF; rh_put_be64(out + 1, v); return 9;
}

static inline size_t rh_pack_i64(int64_t v, unsigned char *out)
{
    if (v >= -32) {
        if (v >= 0)
            return rh_pack_u64((uint64_t)v, out);
        out[0] = (unsigned char)(int8_t)v; /* negative fixint */
        return 1;
    }
    if (v >= -128) { out[0] = 0xD0; out[1] = (unsigned char)(int8_t)v; return 2; }
    if (v >= -32768) { out[0] = 0xD1; rh_put_be16(out + 1, (uint16_t)(int16_t)v); return 3; }
    if (v >= INT32_MIN) { out[0] = 0xD2; rh_put_be32(out + 1, (uint32_t)(int32_t)v); return 5; }
    out[0] = 0xD3; rh_put_be64(out + 1, (uint64_t)v); return 9;
}

static inline size_t rh_pack_f64(double d, unsigned char *out)
{
    uint64_t w;
    memcpy(&w, &d, 8);
    out[0] = 0xCB;
    rh_put_be64(out + 1, w);
    return 9;
}

static inline size_t rh_pack_num(const rh_num *n, unsigned char *out)
{
    if (n->kind == RH_NUM_F64) return rh_pack_f64(n->d, out);
    if (n->kind == RH_NUM_U64) return rh_pack_u64(n->u, out);
    return rh_pack_i64(n->i, out);
}

static inline double rh_num_as_double(const rh_num *n)
{
    if (n->kind == RH_NUM_F64) return n->d;
    if (n->kind == RH_NUM_U64) return (double)n->u;
    return (double)n->i;
}

/* The pure twin's incr_value(old, delta) for a numeric delta: the new stored
 * bytes in out (RH_NUM_MAX_BYTES), their length in *outlen, the decoded old
 * value in *cur. Returns an RH_INCR_* status. */
static inline int rh_incr_bytes(const unsigned char *old, size_t oldlen, int has_old,
                                const rh_num *delta, rh_num *cur,
                                unsigned char *out, size_t *outlen)
{
    if (!has_old) {
        *outlen = rh_pack_num(delta, out);
        return RH_INCR_OK;
    }
    if (!rh_decode_number(old, oldlen, cur))
        return RH_INCR_NOT_NUMBER;
    if (cur->kind == RH_NUM_U64)
        return RH_INCR_OUT_OF_INT64;
    if (cur->kind == RH_NUM_F64 || delta->kind == RH_NUM_F64) {
        /* Python's int + float converts the int with correct rounding, as C does. */
        *outlen = rh_pack_f64(rh_num_as_double(cur) + rh_num_as_double(delta), out);
        return RH_INCR_OK;
    }
    __int128 sum = (__int128)cur->i + (delta->kind == RH_NUM_U64 ? (__int128)delta->u : (__int128)delta->i);
    if (sum < (__int128)INT64_MIN || sum > (__int128)INT64_MAX)
        return RH_INCR_OVERFLOW;
    *outlen = rh_pack_i64((int64_t)sum, out);
    return RH_INCR_OK;
}

/* The length of the one msgpack object at the start of p[0, n): 0 and *used
 * when the bytes hold a whole object by msgpack's grammar (lengths and counts
 * only: UTF-8, ext payloads and map keys are not looked at), else -1 (an
 * unused code 0xC1, or the object runs past n). No recursion: the walk
 * counts the objects still to come, which a container's header adds to.
 * What lets values be decoded and encoded many at a time, as one msgpack
 * array: an element that is exactly one object parses from its own bytes. */
static inline int rh_mp_skip(const unsigned char *p, size_t n, size_t *used)
{
    size_t pos = 0;
    uint64_t pending = 1;
    while (pending) {
        if (pos >= n || pending > (uint64_t)(n - pos))
            return -1; /* every object takes at least a byte */
        unsigned b = p[pos++];
        pending--;
        size_t body = 0, w = 0;
        if (b <= 0x7F || b >= 0xE0 || b == 0xC0 || b == 0xC2 || b == 0xC3)
            continue;
        if (b <= 0x8F) { pending += 2u * (b & 0x0F); continue; }
        if (b <= 0x9F) { pending += b & 0x0F; continue; }
        if (b <= 0xBF) { body = b & 0x1F; goto take; }
        switch (b) {
        case 0xC4: case 0xC5: case 0xC6: /* bin 8/16/32 */
        case 0xD9: case 0xDA: case 0xDB: /* str 8/16/32 */
        case 0xC7: case 0xC8: case 0xC9: /* ext 8/16/32: length, type, data */
            w = (size_t)1 << ((b >= 0xD9 ? b - 0xD9 : (b >= 0xC7 ? b - 0xC7 : b - 0xC4)));
            if (n - pos < w)
                return -1;
            body = w == 1 ? p[pos] : (w == 2 ? rh_be16(p + pos) : rh_be32(p + pos));
            pos += w;
            if (b >= 0xC7 && b <= 0xC9)
                body += 1;
            goto take;
        case 0xCA: body = 4; goto take;
        case 0xCB: body = 8; goto take;
        case 0xCC: case 0xD0: body = 1; goto take;
        case 0xCD: case 0xD1: body = 2; goto take;
        case 0xCE: case 0xD2: body = 4; goto take;
        case 0xCF: case 0xD3: body = 8; goto take;
        case 0xD4: body = 2; goto take;  /* fixext 1..16: type, data */
        case 0xD5: body = 3; goto take;
        case 0xD6: body = 5; goto take;
        case 0xD7: body = 9; goto take;
        case 0xD8: body = 17; goto take;
        case 0xDC: case 0xDD: case 0xDE: case 0xDF: { /* array / map 16/32 */
            w = (b & 1) ? 4 : 2;
            if (n - pos < w)
                return -1;
            uint64_t count = w == 2 ? rh_be16(p + pos) : rh_be32(p + pos);
            pos += w;
            pending += b >= 0xDE ? 2 * count : count;
            continue;
        }
        default: /* 0xC1 */
            return -1;
        }
    take:
        if (n - pos < body)
            return -1;
        pos += body;
    }
    *used = pos;
    return 0;
}

#endif
