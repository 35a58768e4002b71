/* LZ4 block decoder; see lz4_decode.h for the contract.
 *
 * Block grammar: a sequence is a token byte (high nibble literal count, low
 * nibble match length - 4), literal count extension bytes (each added; 255
 * means another follows), the literals, a 2-byte little-endian match offset,
 * and match length extension bytes. The last sequence stops after its literals.
 */
#include "lz4_decode.h"

#include <string.h>

#include "rh_compiler.h"

#define MIN_MATCH 4
#define LAST_LITERALS 5  /* the last 5 output bytes are always literals */
#define MF_LIMIT 12      /* a match may not start within the last 12 output bytes */
/* After a non-final sequence's literals at least an offset (2), a token (1) and
 * the last literals (5) remain: less input than that marks the final sequence. */
#define MIN_TAIL_INPUT 8

const char *rh_lz4_reason(ptrdiff_t status)
{
    switch (status) {
    case RH_LZ4_ERR_EMPTY: return "empty input";
    case RH_LZ4_ERR_TRUNCATED: return "input ends inside a sequence";
    case RH_LZ4_ERR_OFFSET_ZERO: return "match offset 0";
    case RH_LZ4_ERR_OFFSET: return "match offset before the start of the output";
    case RH_LZ4_ERR_OVERRUN: return "output longer than the declared size";
    case RH_LZ4_ERR_END_RULES: return "end-of-block rules violated";
    default: return "unknown error";
    }
}

/* Reads a length extension (bytes added until one is not 255). Returns -1 when
 * the input ends first or the total passes `limit` (no valid length can, so
 * this also keeps the sum from overflowing). */
static inline int read_extension(const unsigned char *src, size_t src_len, size_t *ip,
                                 size_t *length, size_t limit)
{
    size_t i = *ip, len = *length;
    unsigned b;
    do {
        if (RH_UNLIKELY(i >= src_len))
            return -1;
        b = src[i++];
        len += b;
        if (RH_UNLIKELY(len > limit))
            return -1;
    } while (b == 255);
    *ip = i;
    *length = len;
    return 0;
}

ptrdiff_t rh_lz4_decode(const unsigned char *src, size_t src_len,
                        unsigned char *dst, size_t dst_cap)
{
    size_t ip = 0, op = 0;

    if (dst_cap == 0)  /* an empty block is the single token 0x00 */
        return (src_len == 1 && src[0] == 0) ? 0 : RH_LZ4_ERR_EMPTY;
    if (src_len == 0)
        return RH_LZ4_ERR_EMPTY;

    for (;;) {
        if (RH_UNLIKELY(ip >= src_len))
            return RH_LZ4_ERR_TRUNCATED;
        unsigned token = src[ip++];
        size_t lit = token >> 4;
        if (lit == 15 && read_extension(src, src_len, &ip, &lit, src_len) < 0)
            return RH_LZ4_ERR_TRUNCATED;
        if (RH_UNLIKELY(lit > src_len - ip))
            return RH_LZ4_ERR_TRUNCATED;

        size_t lit_end_in = ip + lit, lit_end_out = op + lit;
        if (lit_end_out + MF_LIMIT > dst_cap || lit_end_in + MIN_TAIL_INPUT > src_len) {
            /* Only the final sequence may come this close to either end. */
            if (lit_end_out > dst_cap)
                return RH_LZ4_ERR_OVERRUN;
            if (lit_end_in != src_len)
                return RH_LZ4_ERR_END_RULES;
            memcpy(dst + op, src + ip, lit);
            return (ptrdiff_t)lit_end_out;
        }
        /* Here lit_end_out <= dst_cap - 12 and 8+ input bytes follow. */
        if (lit <= 16 && ip + 16 <= src_len)
            memcpy(dst + op, src + ip, 16); /* fixed size: one load, one store */
        else
            memcpy(dst + op, src + ip, lit);
        ip = lit_end_in;
        op = lit_end_out;

        size_t offset = (size_t)src[ip] | ((size_t)src[ip + 1] << 8);
        ip += 2;
        if (RH_UNLIKELY(offset == 0))
            return RH_LZ4_ERR_OFFSET_ZERO;
        if (RH_UNLIKELY(offset > op))
            return RH_LZ4_ERR_OFFSET;

        size_t mlen = token & 15;
        if (mlen == 15 && read_extension(src, src_len, &ip, &mlen, dst_cap) < 0)
            return RH_LZ4_ERR_TRUNCATED;
        mlen += MIN_MATCH;
        if (RH_UNLIKELY(mlen > dst_cap - op || op + mlen > dst_cap - LAST_LITERALS))
            return RH_LZ4_ERR_END_RULES;

        unsigned char *out = dst + op;
        const unsigned char *from = out - offset;
        unsigned char *out_end = out + mlen;
        if (offset >= 16) {
            /* Chunks never overlap their source; the last one may write up to 15
             * bytes past out_end, which is at most dst_cap - 5 + 15 < cap + slack. */
            do {
                memcpy(out, from, 16);
                out += 16;
                from += 16;
            } while (out < out_end);
        } else if (offset >= 8) {
            do {
                memcpy(out, from, 8);
                out += 8;
                from += 8;
            } while (out < out_end);
        } else {
            /* Short offsets repeat a pattern; byte steps keep the overlap right. */
            while (out < out_end)
                *out++ = *from++;
        }
        op += mlen;
    }
}
