/* CRC32C (Castagnoli): SSE4.2 instruction when the CPU has it, else slicing-by-8.
 *
 * Values follow the `crc32c` package's convention: crc32c(data, value) continues
 * a finished checksum `value`, so crc32c(b, crc32c(a)) == crc32c(a + b).
 */
#ifndef RH_CRC32C_IMPL_H
#define RH_CRC32C_IMPL_H
#include <stddef.h>
#include <stdint.h>

/* Chooses the backend once; force_software != 0 selects the table version. */
void rh_crc32c_init(int force_software);
/* 1 when the SSE4.2 path is in use. */
int rh_crc32c_hw_active(void);
/* Switches backend at run time (tests compare both); returns the new state. */
int rh_crc32c_select(int want_hw);
uint32_t rh_crc32c(uint32_t value, const unsigned char *data, size_t n);
uint32_t rh_crc32c_software(uint32_t value, const unsigned char *data, size_t n);

#endif
