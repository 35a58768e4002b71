/* A bounds-checked decoder for one LZ4 block (the raw block format, no frame).
 *
 * The writer compresses with the lz4 package (LZ4_compress_default), so what
 * this must accept is what that produces; everything else is rejected with a
 * reason. The end-of-block rules are the ones the LZ4 block spec states and
 * LZ4_decompress_safe checks: a match may not start within the last 12 output
 * bytes, the last 5 output bytes are literals, and the final sequence is
 * literals only and ends the input exactly.
 */
#ifndef RH_LZ4_DECODE_H
#define RH_LZ4_DECODE_H
#include <stddef.h>
#include <stdint.h>

/* The decoder copies in 16-byte chunks while far from the end, so the output
 * buffer must have this many writable bytes past dst_cap. */
#define RH_LZ4_SLACK 32

enum rh_lz4_status {
    RH_LZ4_ERR_EMPTY = -1,        /* no input (or wrong input for an empty output) */
    RH_LZ4_ERR_TRUNCATED = -2,    /* input ends inside a sequence */
    RH_LZ4_ERR_OFFSET_ZERO = -3,  /* match offset 0 */
    RH_LZ4_ERR_OFFSET = -4,       /* match reaches before the output start */
    RH_LZ4_ERR_OVERRUN = -5,      /* output would exceed dst_cap */
    RH_LZ4_ERR_END_RULES = -6,    /* a match too near the end, or input after the final literals */
};

/* Decodes src into dst (capacity dst_cap, plus RH_LZ4_SLACK bytes of slack).
 * Returns the number of bytes produced (>= 0) or a negative rh_lz4_status.
 * Never reads outside src[0, src_len) nor writes outside dst[0, dst_cap + slack). */
ptrdiff_t rh_lz4_decode(const unsigned char *src, size_t src_len,
                        unsigned char *dst, size_t dst_cap);

/* A short English reason for a negative status. */
const char *rh_lz4_reason(ptrdiff_t status);

#endif
