/* Small compiler helpers shared by the native core's C and Cython code. */
#ifndef RH_COMPILER_H
#define RH_COMPILER_H

#if defined(__GNUC__) || defined(__clang__)
#define RH_LIKELY(x) __builtin_expect(!!(x), 1)
#define RH_UNLIKELY(x) __builtin_expect(!!(x), 0)
/* A read prefetch into all cache levels; a prefetch never faults, so a stale
 * address (a table that has since grown) is harmless. */
#define RH_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)
#else
#define RH_LIKELY(x) (x)
#define RH_UNLIKELY(x) (x)
#define RH_PREFETCH(p) ((void)(p))
#endif

#endif
