/* CRC32C for the frame checksums; see crc32c_impl.h.
 *
 * The replay loop checks every frame, so the hardware path matters: with it a
 * 256 KiB frame costs ~30 us instead of ~200 us. The software path exists for
 * CPUs without SSE4.2 and so tests can prove both give the same values.
 */
#include "crc32c_impl.h"

#include <string.h>

#define RH_CRC32C_POLY 0x82F63B78u /* reflected Castagnoli polynomial */

/* slice[k][b]: CRC of byte b followed by k zero bytes. */
static uint32_t slice[8][256];
static int tables_ready = 0;
static int use_hw = 0;

static void build_tables(void)
{
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (RH_CRC32C_POLY & (0u - (c & 1u)));
        slice[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = slice[0][b];
        for (int k = 1; k < 8; k++) {
            c = (c >> 8) ^ slice[0][c & 0xFF];
            slice[k][b] = c;
        }
    }
    tables_ready = 1;
}

uint32_t rh_crc32c_software(uint32_t value, const unsigned char *p, size_t n)
{
    uint32_t crc = ~value;
    if (!tables_ready)
        build_tables();
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8); /* unaligned-safe; little-endian host assumed (x86, arm64) */
        uint32_t lo = (uint32_t)w ^ crc;
        uint32_t hi = (uint32_t)(w >> 32);
        crc = slice[7][lo & 0xFF] ^ slice[6][(lo >> 8) & 0xFF] ^
              slice[5][(lo >> 16) & 0xFF] ^ slice[4][lo >> 24] ^
              slice[3][hi & 0xFF] ^ slice[2][(hi >> 8) & 0xFF] ^
              slice[1][(hi >> 16) & 0xFF] ^ slice[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ slice[0][(crc ^ *p++) & 0xFF];
    return ~crc;
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define RH_HAVE_HW 1

/* Compiled for SSE4.2 only in this function, so the module still loads on a
 * CPU without it; rh_crc32c_init decides at run time whether to call it. */
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t value, const unsigned char *p, size_t n)
{
#if defined(__x86_64__)
    uint64_t crc = (uint32_t)~value;
    while (n && ((uintptr_t)p & 7)) {
        crc = _mm_crc32_u8((uint32_t)crc, *p++);
        n--;
    }
    while (n >= 32) {
        uint64_t a, b, c, d;
        memcpy(&a, p, 8);
        memcpy(&b, p + 8, 8);
        memcpy(&c, p + 16, 8);
        memcpy(&d, p + 24, 8);
        crc = _mm_crc32_u64(crc, a);
        crc = _mm_crc32_u64(crc, b);
        crc = _mm_crc32_u64(crc, c);
        crc = _mm_crc32_u64(crc, d);
        p += 32;
        n -= 32;
    }
    while (n >= 8) {
        uint64_t a;
        memcpy(&a, p, 8);
        crc = _mm_crc32_u64(crc, a);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)crc;
#else
    uint32_t c32 = ~value;
#endif
    while (n--)
        c32 = _mm_crc32_u8(c32, *p++);
    return ~c32;
}
#else
#define RH_HAVE_HW 0
#endif

static int cpu_has_sse42(void)
{
#if RH_HAVE_HW
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
    return 0;
#endif
}

void rh_crc32c_init(int force_software)
{
    build_tables();
    use_hw = (!force_software && cpu_has_sse42()) ? 1 : 0;
}

int rh_crc32c_hw_active(void) { return use_hw; }

int rh_crc32c_select(int want_hw)
{
    use_hw = (want_hw && cpu_has_sse42()) ? 1 : 0;
    return use_hw;
}

uint32_t rh_crc32c(uint32_t value, const unsigned char *p, size_t n)
{
#if RH_HAVE_HW
    if (use_hw)
        return crc32c_hw(value, p, n);
#endif
    return rh_crc32c_software(value, p, n);
}
