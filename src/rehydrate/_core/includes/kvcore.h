/* The KVTable's storage: an open-addressing hash table over an arena.
 *
 * Why this shape: replay applies ~10M small ops; a Python dict costs several
 * cache misses per op in its objects. Here a slot is 16 bytes (64-bit hash +
 * arena offset), probing is linear (neighbouring slots share cache lines),
 * and an entry's key and msgpack value sit together in one arena, so a lookup
 * is about two cache misses, and both can be prefetched ahead by replay.
 *
 * Invariants:
 * - capacity is a power of two, load <= 0.7, an empty slot has off == 0
 *   (arena offset 0 is never used);
 * - deletion shifts later cluster members back (no tombstones), so a probe
 *   stops at the first empty slot;
 * - an entry is {klen, vlen, vcap} then klen key bytes then vcap value bytes,
 *   8-aligned; a value that grows past vcap moves to a new entry and the old
 *   one becomes garbage; when garbage passes half the arena the arena is
 *   compacted in place (no second arena, so no double peak).
 * Everything here runs without the GIL; callers serialize access.
 */
#ifndef RH_KVCORE_H
#define RH_KVCORE_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "rh_compiler.h"
#include "valcodec.h"
#include "xxh64.h"

typedef struct {
    uint64_t hash;
    uint64_t off; /* 0: empty */
} rh_slot;

typedef struct {
    uint32_t klen;
    uint32_t vlen;
    uint32_t vcap; /* RH_ENTRY_DEAD set: garbage awaiting compaction */
} rh_entry;

#define RH_ENTRY_DEAD 0x80000000u
#define RH_VALUE_MAX 0x7FFFFF00u
#define RH_MIN_SLOTS 8u
#define RH_ARENA_BASE 8u       /* first usable offset, so 0 can mean empty */
#define RH_COMPACT_MIN 65536u  /* do not bother compacting tiny arenas */
/* Dead entries up to RH_FREE_CLASSES * 8 bytes go on a free list for their
 * exact size and are reused by the next entry of that size: a delete then a
 * put of a similar record (the common churn) recycles memory instead of
 * growing garbage until a compaction has to move the whole arena. */
#define RH_FREE_CLASSES 64u

typedef struct {
    rh_slot *slots;
    uint64_t mask;      /* capacity - 1; meaningless while slots == NULL */
    uint64_t count;
    unsigned char *arena;
    uint64_t arena_len;
    uint64_t arena_cap;
    uint64_t garbage;   /* bytes of dead entries in the arena (free lists included) */
    int arena_mapped;   /* arena is an mmap (grown with mremap), not a malloc block */
    int defer_huge;     /* a bulk load: no huge-page advice, slots populated at once */
    int arena_filemap;  /* arena begins with a snapshot image mapped MAP_PRIVATE
                           (kvimage.h) inside a bigger anonymous reservation */
    int slots_mapped;   /* slots are an mmap (a bulk load's), not a malloc block */
    uint64_t version;   /* bumped by every mutation; iterators compare it */
    /* Head offset / 8 of each size class's free list (0: empty). A listed
     * entry keeps klen and vcap (compaction walks it) and holds the next
     * link, also offset / 8, in vlen. */
    uint32_t free_head[RH_FREE_CLASSES];
} rh_kv;

/* Canonical key bytes split as tag + body: a Python str or int key is hashed
 * and compared without first building the tagged bytes. tag < 0 means the
 * empty key (only the raw surface can make one). */
typedef struct {
    int tag;
    const unsigned char *body;
    size_t len;
    uint64_t hash;
} rh_key;

/* ---- hashing ------------------------------------------------------------ */

static inline uint64_t rh_mum(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

/* 64-bit hash of tag + body: multiply-fold over 8-byte words. Not a defence
 * against chosen keys (the log is trusted after its CRC); good spread for
 * linear probing, where the low bits pick the slot. */
static inline uint64_t rh_hash_parts(int tag, const unsigned char *p, size_t n)
{
    uint64_t h = rh_mum(((uint64_t)(tag + 1) << 32) ^ (uint64_t)n ^ 0x9E3779B97F4A7C15ull,
                        0xD6E8FEB86659FD93ull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = rh_mum(h ^ w, 0xA0761D6478BD642Full);
        p += 8;
        n -= 8;
    }
    if (n) {
        uint64_t w = 0;
        memcpy(&w, p, n);
        h = rh_mum(h ^ w, 0xE7037ED1A0B428DBull);
    }
    return rh_mum(h, 0x8EBC6AF09C88C6E3ull);
}

static inline void rh_key_from_bytes(rh_key *k, const unsigned char *kb, size_t klen)
{
    if (klen == 0) {
        k->tag = -1;
        k->body = kb;
        k->len = 0;
    } else {
        k->tag = kb[0];
        k->body = kb + 1;
        k->len = klen - 1;
    }
    k->hash = rh_hash_parts(k->tag, k->body, k->len);
}

/* ---- entries ------------------------------------------------------------ */

static inline rh_entry *rh_entry_at(const rh_kv *kv, uint64_t off)
{
    return (rh_entry *)(kv->arena + off);
}
static inline unsigned char *rh_entry_key(rh_entry *e) { return (unsigned char *)(e + 1); }
static inline unsigned char *rh_entry_value(rh_entry *e) { return (unsigned char *)(e + 1) + e->klen; }
static inline uint64_t rh_entry_size(uint32_t klen, uint32_t vcap)
{
    return ((uint64_t)sizeof(rh_entry) + klen + vcap + 7u) & ~(uint64_t)7u;
}

static inline int rh_key_eq(const rh_kv *kv, uint64_t off, const rh_key *k)
{
    rh_entry *e = rh_entry_at(kv, off);
    const unsigned char *kb = rh_entry_key(e);
    if (k->tag < 0)
        return e->klen == 0;
    if (e->klen != k->len + 1 || kb[0] != (unsigned char)k->tag)
        return 0;
    /* Most keys are short: compare them in two overlapping 8-byte loads
     * rather than a call to memcmp. */
    if (k->len >= 8 && k->len <= 16) {
        uint64_t a0, a1, b0, b1;
        memcpy(&a0, kb + 1, 8);
        memcpy(&b0, k->body, 8);
        memcpy(&a1, kb + 1 + k->len - 8, 8);
        memcpy(&b1, k->body + k->len - 8, 8);
        return ((a0 ^ b0) | (a1 ^ b1)) == 0;
    }
    return memcmp(kb + 1, k->body, k->len) == 0;
}

/* The slot holding k, or -1; *empty (if given) gets the empty slot that
 * ended the probe, where an insert of k belongs. */
static inline int64_t rh_find_or_empty(const rh_kv *kv, const rh_key *k, uint64_t *empty)
{
    if (RH_UNLIKELY(kv->slots == NULL))
        return -1;
    uint64_t mask = kv->mask, i = k->hash & mask;
    for (;;) {
        const rh_slot *s = &kv->slots[i];
        if (s->off == 0) {
            if (empty)
                *empty = i;
            return -1;
        }
        if (s->hash == k->hash && rh_key_eq(kv, s->off, k))
            return (int64_t)i;
        i = (i + 1) & mask;
    }
}

static inline int64_t rh_find(const rh_kv *kv, const rh_key *k)
{
    return rh_find_or_empty(kv, k, NULL);
}

static inline uint64_t rh_capacity_for(uint64_t n)
{
    uint64_t cap = RH_MIN_SLOTS;
    while (n * 10 > cap * 7)
        cap <<= 1;
    return cap;
}

/* Asks for transparent huge pages on a big block (THP is often in "madvise"
 * mode). Lookups land on random slots and entries; with 4 KiB pages nearly
 * every one also misses the TLB. Only the page-aligned inside of the block is
 * advised; failure is harmless. */
#define RH_HUGE_MIN ((size_t)4 << 20)
static inline void rh_advise_huge(void *p, size_t n)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (n < RH_HUGE_MIN)
        return;
    uintptr_t start = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
    uintptr_t end = ((uintptr_t)p + n) & ~(uintptr_t)4095;
    if (end > start)
        madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
    (void)p;
    (void)n;
#endif
}

static void rh_slots_free(rh_kv *kv)
{
#if defined(__linux__)
    if (kv->slots_mapped) {
        munmap(kv->slots, (kv->mask + 1) * sizeof(rh_slot));
        kv->slots = NULL;
        kv->slots_mapped = 0;
        return;
    }
#endif
    free(kv->slots);
    kv->slots = NULL;
}

/* Rebuilds the slot array at new_cap (a power of two >= count / 0.7). */
static int rh_resize(rh_kv *kv, uint64_t new_cap)
{
    size_t bytes = new_cap * sizeof(rh_slot);
    rh_slot *ns = NULL;
    int mapped = 0;
#if defined(__linux__) && defined(MAP_POPULATE)
    if (kv->defer_huge && bytes >= RH_HUGE_MIN) {
        /* A bulk load: zeroed pages faulted in by the kernel at once, about
         * a third cheaper than one trap per 4 KiB page on this kind of VM. */
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (p != MAP_FAILED) {
            ns = (rh_slot *)p;
            mapped = 1;
        }
    }
#endif
    if (!ns) {
        /* malloc + memset, not calloc: calloc's untouched pages are first
         * read by the probes below, which maps the shared zero page and then
         * pays a second (copy-on-write) fault on the first write. */
        ns = (rh_slot *)malloc(bytes);
        if (!ns)
            return -1;
        if (!kv->defer_huge)
            rh_advise_huge(ns, bytes);
        memset(ns, 0, bytes);
    }
    uint64_t nmask = new_cap - 1;
    if (kv->slots) {
        for (uint64_t i = 0; i <= kv->mask; i++) {
            rh_slot s = kv->slots[i];
            if (s.off == 0)
                continue;
            uint64_t j = s.hash & nmask;
            while (ns[j].off)
                j = (j + 1) & nmask;
            ns[j] = s;
        }
        rh_slots_free(kv);
    }
    kv->slots = ns;
    kv->slots_mapped = mapped;
    kv->mask = nmask;
    return 0;
}

/* Resizes the arena to `cap` bytes keeping its contents; 0 or -1.
 * Small arenas live in malloc; from RH_ARENA_MAP_MIN up the arena is its own
 * mapping, grown and shrunk with mremap, which moves page tables rather than
 * bytes: glibc's realloc only does that above its (adaptive, up to 32 MiB)
 * mmap threshold and copies below it. */
#define RH_ARENA_MAP_MIN ((uint64_t)1 << 20)
static int rh_arena_resize(rh_kv *kv, uint64_t cap)
{
#if defined(__linux__) && defined(MREMAP_MAYMOVE)
    if (kv->arena_filemap) {
        /* A mapped image past its reservation (or shrinking): mremap cannot
         * move a file mapping and an anonymous one together, so copy once
         * into a plain anonymous arena; from then on it grows as any other. */
        cap = (cap + 4095) & ~(uint64_t)4095;
        void *p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return -1;
        memcpy(p, kv->arena, kv->arena_len < cap ? kv->arena_len : cap);
        munmap(kv->arena, kv->arena_cap);
        kv->arena = (unsigned char *)p;
        kv->arena_cap = cap;
        kv->arena_filemap = 0;
        if (!kv->defer_huge)
            rh_advise_huge(p, cap);
        return 0;
    }
    /* Whole pages, so madvise covers the entire mapping: advice on part of
     * it would split it into several mappings, which mremap refuses. */
    if (kv->arena_mapped || cap >= RH_ARENA_MAP_MIN)
        cap = (cap + 4095) & ~(uint64_t)4095;
    if (kv->arena_mapped) {
        void *p = mremap(kv->arena, kv->arena_cap, cap, MREMAP_MAYMOVE);
        if (p == MAP_FAILED)
            return -1;
        kv->arena = (unsigned char *)p;
        kv->arena_cap = cap;
        if (cap > RH_HUGE_MIN && !kv->defer_huge)
            rh_advise_huge(p, cap);
        return 0;
    }
    if (cap >= RH_ARENA_MAP_MIN) {
        /* A bulk load writes all of it soon: have the kernel fault it in at
         * once, far cheaper than one trap per 4 KiB page on this kind of VM. */
        int populate = 0;
#ifdef MAP_POPULATE
        if (kv->defer_huge)
            populate = MAP_POPULATE;
#endif
        void *p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | populate,
                       -1, 0);
        if (p == MAP_FAILED)
            return -1;
        if (!kv->defer_huge)
            rh_advise_huge(p, cap);
        if (kv->arena) {
            memcpy(p, kv->arena, kv->arena_len < cap ? kv->arena_len : cap);
            free(kv->arena);
        }
        kv->arena = (unsigned char *)p;
        kv->arena_cap = cap;
        kv->arena_mapped = 1;
        return 0;
    }
#endif
    unsigned char *p = (unsigned char *)realloc(kv->arena, cap);
    if (!p)
        return -1;
    kv->arena = p;
    kv->arena_cap = cap;
    if (!kv->defer_huge)
        rh_advise_huge(p, cap);
    return 0;
}

/* The end of a bulk load (a snapshot): memory allocated from now on is
 * advised for huge pages again; what the load faulted in stays in 4 KiB
 * pages. A bulk load runs with defer_huge set because on a machine whose
 * memory other processes have fragmented, a huge-page fault waits on
 * compaction (measured: a 1.8M-key open took 0.33-0.49 s after a Redis and
 * a pickle load had run, against a steady 0.22-0.25 s with 4 KiB faults);
 * and advising the loaded memory afterwards cost about 75 ms at 1.8M keys
 * (the kernel collapses pages there and then), more than the lookups it
 * would speed up save in a start. */
static void rh_kv_end_bulk(rh_kv *kv)
{
    kv->defer_huge = 0;
}

static void rh_arena_free(rh_kv *kv)
{
#if defined(__linux__) && defined(MREMAP_MAYMOVE)
    if (kv->arena_mapped) {
        munmap(kv->arena, kv->arena_cap);
        kv->arena = NULL;
        kv->arena_mapped = 0;
        kv->arena_filemap = 0;
        return;
    }
#endif
    free(kv->arena);
    kv->arena = NULL;
}

/* Arena bytes for one more entry of `size`; returns its offset or 0 (no memory).
 * Growth by 1.5x through realloc: glibc moves big blocks with mremap, so the
 * old and new arena never both occupy memory. */
static uint64_t rh_arena_alloc(rh_kv *kv, uint64_t size)
{
    uint64_t cls = size >> 3;
    if (cls < RH_FREE_CLASSES && kv->free_head[cls]) {
        uint64_t off = (uint64_t)kv->free_head[cls] << 3;
        kv->free_head[cls] = rh_entry_at(kv, off)->vlen;
        kv->garbage -= size;
        return off;
    }
    if (kv->arena_len == 0)
        kv->arena_len = RH_ARENA_BASE;
    if (kv->arena_cap - kv->arena_len < size || kv->arena == NULL) {
        uint64_t need = kv->arena_len + size;
        uint64_t cap = kv->arena_cap ? kv->arena_cap : 4096;
        /* 1.25x: realloc moves big blocks with mremap (no copy), so small
         * steps cost little and keep unused capacity low. */
        while (cap < need)
            cap = cap + cap / 4 + 4096;
        if (rh_arena_resize(kv, cap) < 0)
            return 0;
    }
    uint64_t off = kv->arena_len;
    kv->arena_len += size;
    return off;
}

/* Grows the slot array for `keys` entries and the arena to `arena_bytes`,
 * ahead of a replay whose size is known from an earlier run: no rehash and
 * no arena moves on the way up. Never shrinks. 0 or -1 (no memory). */
static int rh_reserve(rh_kv *kv, uint64_t keys, uint64_t arena_bytes)
{
    uint64_t cap = rh_capacity_for(keys);
    if (kv->slots == NULL || cap > kv->mask + 1) {
        if (rh_resize(kv, cap) < 0)
            return -1;
    }
    if (arena_bytes > kv->arena_cap) {
        if (rh_arena_resize(kv, arena_bytes) < 0)
            return -1;
        if (kv->arena_len == 0)
            kv->arena_len = RH_ARENA_BASE;
    }
    return 0;
}

/* Slides live entries down over the garbage, in arena order, fixing each
 * one's slot (found by rehashing its key). */
static void rh_compact(rh_kv *kv)
{
    uint64_t src = RH_ARENA_BASE, dst = RH_ARENA_BASE, end = kv->arena_len;
    if (kv->arena == NULL)
        return;
    while (src < end) {
        rh_entry *e = rh_entry_at(kv, src);
        uint32_t vcap = e->vcap & ~RH_ENTRY_DEAD;
        uint64_t size = rh_entry_size(e->klen, vcap);
        if (!(e->vcap & RH_ENTRY_DEAD)) {
            if (src != dst) {
                rh_key k;
                rh_key_from_bytes(&k, rh_entry_key(e), e->klen);
                uint64_t i = k.hash & kv->mask;
                while (kv->slots[i].off != src)
                    i = (i + 1) & kv->mask;
                memmove(kv->arena + dst, kv->arena + src, size);
                kv->slots[i].off = dst;
            }
            dst += size;
        }
        src += size;
    }
    kv->arena_len = dst;
    kv->garbage = 0;
    memset(kv->free_head, 0, sizeof(kv->free_head)); /* every dead entry is gone */
    /* Give memory back when the arena is now mostly empty capacity. */
    if (kv->arena_cap > 2 * dst + 4096) {
        uint64_t cap = dst + dst / 4 + 4096;
        (void)rh_arena_resize(kv, cap); /* on failure the bigger arena stays */
    }
}

static inline void rh_maybe_compact(rh_kv *kv)
{
    if (kv->garbage > RH_COMPACT_MIN && kv->garbage * 2 > kv->arena_len)
        rh_compact(kv);
}

static inline void rh_free_entry(rh_kv *kv, uint64_t off)
{
    rh_entry *e = rh_entry_at(kv, off);
    uint64_t size = rh_entry_size(e->klen, e->vcap & ~RH_ENTRY_DEAD);
    uint64_t cls = size >> 3;
    kv->garbage += size;
    e->vcap |= RH_ENTRY_DEAD;
    if (cls < RH_FREE_CLASSES && (off >> 3) <= UINT32_MAX) {
        e->vlen = kv->free_head[cls];
        kv->free_head[cls] = (uint32_t)(off >> 3);
    }
}

/* Writes a new entry for k with value v; returns its offset or 0. */
static uint64_t rh_new_entry(rh_kv *kv, const rh_key *k, const unsigned char *v,
                             size_t vlen, size_t vcap)
{
    uint32_t klen = k->tag < 0 ? 0 : (uint32_t)(k->len + 1);
    uint64_t size = rh_entry_size(klen, (uint32_t)vcap);
    uint64_t off = rh_arena_alloc(kv, size);
    if (!off)
        return 0;
    rh_entry *e = rh_entry_at(kv, off);
    e->klen = klen;
    e->vlen = (uint32_t)vlen;
    /* The 8-byte rounding's slack becomes value room too. */
    e->vcap = (uint32_t)(size - sizeof(rh_entry) - klen);
    unsigned char *kb = rh_entry_key(e);
    if (klen) {
        kb[0] = (unsigned char)k->tag;
        memcpy(kb + 1, k->body, k->len);
    }
    memcpy(kb + klen, v, vlen);
    return off;
}

/* Insert or replace. vcap_min reserves value room (incr keeps numbers in
 * place). v must not point into this table's arena. 0, or -1 no memory. */
static int rh_put(rh_kv *kv, const rh_key *k, const unsigned char *v, size_t vlen,
                  size_t vcap_min)
{
    uint64_t empty = 0;
    int64_t at = rh_find_or_empty(kv, k, &empty);
    if (at >= 0) {
        rh_slot *s = &kv->slots[at];
        rh_entry *e = rh_entry_at(kv, s->off);
        if (vlen <= (e->vcap & ~RH_ENTRY_DEAD)) {
            memcpy(rh_entry_value(e), v, vlen);
            e->vlen = (uint32_t)vlen;
            kv->version++;
            return 0;
        }
        uint64_t old = s->off;
        uint64_t off = rh_new_entry(kv, k, v, vlen, vlen > vcap_min ? vlen : vcap_min);
        if (!off)
            return -1;
        rh_free_entry(kv, old);
        kv->slots[at].off = off; /* slots did not move: only the arena grew */
        kv->version++;
        rh_maybe_compact(kv);
        return 0;
    }
    int resized = 0;
    if (kv->slots == NULL || (kv->count + 1) * 10 > (kv->mask + 1) * 7) {
        if (rh_resize(kv, rh_capacity_for(kv->count + 1)) < 0)
            return -1;
        resized = 1;
    }
    uint64_t off = rh_new_entry(kv, k, v, vlen, vlen > vcap_min ? vlen : vcap_min);
    if (!off)
        return -1;
    uint64_t mask = kv->mask, i = resized ? (k->hash & mask) : empty;
    while (kv->slots[i].off)
        i = (i + 1) & mask;
    kv->slots[i].hash = k->hash;
    kv->slots[i].off = off;
    kv->count++;
    kv->version++;
    return 0;
}

/* Empties slot i and shifts later members of its cluster back, so every key
 * stays reachable from its home slot without tombstones. */
static inline void rh_remove_slot(rh_kv *kv, uint64_t i)
{
    uint64_t mask = kv->mask, j = i;
    rh_slot *slots = kv->slots;
    for (;;) {
        j = (j + 1) & mask;
        if (slots[j].off == 0)
            break;
        uint64_t home = slots[j].hash & mask;
        /* slot j may move to the hole at i when i lies on j's probe path */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            slots[i] = slots[j];
            i = j;
        }
    }
    slots[i].off = 0;
    slots[i].hash = 0;
}

static void rh_clear(rh_kv *kv)
{
    rh_slots_free(kv);
    rh_arena_free(kv);
    kv->slots = NULL;
    kv->mask = 0;
    kv->count = 0;
    kv->arena_len = kv->arena_cap = kv->garbage = 0;
    memset(kv->free_head, 0, sizeof(kv->free_head));
    kv->version++;
}

/* 1 if k was there (and is now gone), else 0. */
static int rh_delete(rh_kv *kv, const rh_key *k)
{
    kv->version++;
    int64_t at = rh_find(kv, k);
    if (at < 0)
        return 0;
    rh_free_entry(kv, kv->slots[at].off);
    rh_remove_slot(kv, (uint64_t)at);
    kv->count--;
    if (kv->count == 0) {
        /* An empty table gives all of its memory back. */
        uint64_t v = kv->version;
        rh_clear(kv);
        kv->version = v;
        return 1;
    }
    /* Shrink the slot array when it is mostly empty (hysteresis: grow at
     * 0.7, shrink below 1/8). Failure to shrink is harmless. */
    if (kv->mask + 1 > 64 && kv->count * 8 < kv->mask + 1)
        rh_resize(kv, rh_capacity_for(kv->count));
    rh_maybe_compact(kv);
    return 1;
}

static inline uint64_t rh_memory_bytes(const rh_kv *kv)
{
    /* A mapped image's reservation is address space, not memory: count
     * what it holds (page cache until written, then private copies). */
    uint64_t arena = kv->arena_filemap ? kv->arena_len : kv->arena_cap;
    return arena + (kv->slots ? (kv->mask + 1) * sizeof(rh_slot) : 0);
}

/* incr of k by delta, rewriting the number in place when it fits its value
 * room. Returns an RH_INCR_* status (the table is unchanged unless OK; *cur
 * holds the stored number for error messages) or -1 when out of memory. */
static int rh_incr(rh_kv *kv, const rh_key *k, const rh_num *delta, rh_num *cur)
{
    unsigned char out[RH_NUM_MAX_BYTES];
    size_t outlen = 0;
    int st;
    int64_t at = rh_find(kv, k);
    if (at >= 0) {
        rh_entry *e = rh_entry_at(kv, kv->slots[at].off);
        st = rh_incr_bytes(rh_entry_value(e), e->vlen, 1, delta, cur, out, &outlen);
        if (st != RH_INCR_OK)
            return st;
        if (outlen <= (e->vcap & ~RH_ENTRY_DEAD)) {
            memcpy(rh_entry_value(e), out, outlen);
            e->vlen = (uint32_t)outlen;
            kv->version++;
            return RH_INCR_OK;
        }
    } else {
        rh_incr_bytes(NULL, 0, 0, delta, cur, out, &outlen);
    }
    /* A number's room is the widest msgpack number, so later incrs stay put. */
    return rh_put(kv, k, out, outlen, RH_NUM_MAX_BYTES) < 0 ? -1 : RH_INCR_OK;
}

/* Next occupied slot index >= i, or -1. */
static inline int64_t rh_next_slot(const rh_kv *kv, uint64_t i)
{
    if (kv->slots == NULL)
        return -1;
    for (; i <= kv->mask; i++)
        if (kv->slots[i].off)
            return (int64_t)i;
    return -1;
}

/* ---- content digest (docs/FORMAT.md, "Digest") ---------------------------
 * An order-independent hash of the live entries: the per-entry XXH64s are
 * added mod 2^64, so neither slot order nor arena order (both depend on the
 * table's history) can change the result, and the pure twin, iterating a
 * dict, gets the same value. */

/* Entries up to this size (with the 4-byte length prefix) are hashed from a
 * stack copy with the prefix in front, four at a time; bigger ones stream. */
#define RH_DIGEST_INLINE 256u
/* How far ahead of the walk to prefetch the arena. Measured on a 1.8M-entry
 * table (this VM, 2.6 GHz Xeon): with the hardware prefetcher alone the
 * hashing walk took twice as long (88 vs 45 ms, before the four-way hash);
 * 1, 2, 4 and 8 KiB ahead all did the same, 512 bytes a little worse. */
#define RH_DIGEST_PREFETCH 2048u

static inline void rh_digest_prefix(unsigned char *dst, uint32_t klen)
{
    dst[0] = (unsigned char)klen;
    dst[1] = (unsigned char)(klen >> 8);
    dst[2] = (unsigned char)(klen >> 16);
    dst[3] = (unsigned char)(klen >> 24);
}

/* XXH64(u32le(klen) || key || value, seed 0) of one entry. */
static inline uint64_t rh_entry_digest(const rh_entry *e)
{
    /* Key and value are contiguous in the entry, but the 4 bytes in front of
     * the key are vcap, not klen: the prefix has to be put there by hand. */
    const unsigned char *kv = (const unsigned char *)(e + 1);
    size_t n = (size_t)e->klen + e->vlen;
    unsigned char pre[4];
    rh_digest_prefix(pre, e->klen);
    if (n + 4 <= RH_DIGEST_INLINE) {
        unsigned char buf[RH_DIGEST_INLINE];
        memcpy(buf, pre, 4);
        memcpy(buf + 4, kv, n);
        return rh_xxh64(buf, n + 4, 0);
    }
    rh_xxh64_state st;
    rh_xxh64_reset(&st, 0);
    rh_xxh64_update(&st, pre, 4);
    rh_xxh64_update(&st, kv, n);
    return rh_xxh64_digest(&st);
}

/* XXH64(u64le(sum) || u64le(count), seed 0): the count goes in so that an
 * empty table (sum 0) and a table whose entry hashes happen to sum to 0, or
 * two tables that differ by entries summing to 0, still differ. */
static inline uint64_t rh_digest_finish(uint64_t sum, uint64_t count)
{
    unsigned char b[16];
    for (int i = 0; i < 8; i++) {
        b[i] = (unsigned char)(sum >> (8 * i));
        b[8 + i] = (unsigned char)(count >> (8 * i));
    }
    return rh_xxh64(b, 16, 0);
}

/* Sums entry hashes four at a time (rh_xxh64_x4) from stack copies with the
 * length prefix in front; an entry too big for a copy is hashed streaming. */
typedef struct {
    unsigned char buf[4][RH_DIGEST_INLINE];
    size_t n[4];
    int queued;
    uint64_t sum;
} rh_digest_acc;

static inline void rh_digest_acc_init(rh_digest_acc *a)
{
    a->queued = 0;
    a->sum = 0;
}

static inline void rh_digest_acc_add(rh_digest_acc *a, const unsigned char *key, uint32_t klen,
                                     const unsigned char *val, uint32_t vlen)
{
    size_t len = (size_t)klen + vlen;
    if (len + 4 <= RH_DIGEST_INLINE) {
        unsigned char *b = a->buf[a->queued];
        rh_digest_prefix(b, klen);
        memcpy(b + 4, key, klen);
        memcpy(b + 4 + klen, val, vlen);
        a->n[a->queued] = len + 4;
        if (++a->queued == 4) {
            const unsigned char *p[4] = {a->buf[0], a->buf[1], a->buf[2], a->buf[3]};
            uint64_t h[4];
            rh_xxh64_x4(p, a->n, 0, h);
            a->sum += h[0] + h[1] + h[2] + h[3];
            a->queued = 0;
        }
        return;
    }
    unsigned char pre[4];
    rh_xxh64_state st;
    rh_digest_prefix(pre, klen);
    rh_xxh64_reset(&st, 0);
    rh_xxh64_update(&st, pre, 4);
    rh_xxh64_update(&st, key, klen);
    rh_xxh64_update(&st, val, vlen);
    a->sum += rh_xxh64_digest(&st);
}

/* The sum of every entry hash added so far (mod 2^64). */
static inline uint64_t rh_digest_acc_sum(rh_digest_acc *a)
{
    for (int j = 0; j < a->queued; j++)
        a->sum += rh_xxh64(a->buf[j], a->n[j], 0);
    a->queued = 0;
    return a->sum;
}

/* Next live entry at or after *off in arena order (advancing *off past it),
 * or NULL at the end. Dead entries (freed, or on a free list) carry
 * RH_ENTRY_DEAD in vcap and are stepped over; their klen and vcap stay valid
 * (rh_free_entry keeps them; a free list's link lives in vlen). The arena is
 * prefetched ahead: the walk is sequential, the hardware prefetcher alone
 * was half as fast. */
static inline const rh_entry *rh_arena_next(const rh_kv *kv, uint64_t *off)
{
    uint64_t o = *off < RH_ARENA_BASE ? RH_ARENA_BASE : *off, end = kv->arena_len;
    if (kv->arena == NULL)
        return NULL;
    while (o < end) {
        const rh_entry *e = (const rh_entry *)(kv->arena + o);
        uint32_t vcap = e->vcap;
        if (o + RH_DIGEST_PREFETCH < end)
            RH_PREFETCH(kv->arena + o + RH_DIGEST_PREFETCH);
        o += rh_entry_size(e->klen, vcap & ~RH_ENTRY_DEAD);
        if (!(vcap & RH_ENTRY_DEAD)) {
            *off = o;
            return e;
        }
    }
    *off = o;
    return NULL;
}

/* The table's digest into *out; 0, or -1 when the arena walk found another
 * number of live entries than kv->count (a broken invariant, never data).
 *
 * Walks the arena in address order rather than the slot array: sequential
 * reads, instead of one random cache miss per key (3x faster at 1.8M keys);
 * the price is reading the garbage too, which compaction keeps below half
 * the arena. Needs only the arena (a checkpoint's copy has no slots).
 * Reads only: safe beside readers, never beside a writer. */
static int rh_kv_digest(const rh_kv *kv, uint64_t *out)
{
    rh_digest_acc acc;
    uint64_t live = 0, off = 0;
    const rh_entry *e;
    rh_digest_acc_init(&acc);
    while ((e = rh_arena_next(kv, &off)) != NULL) {
        live++;
        rh_digest_acc_add(&acc, (const unsigned char *)(e + 1), e->klen,
                          (const unsigned char *)(e + 1) + e->klen, e->vlen);
    }
    if (live != kv->count)
        return -1;
    *out = rh_digest_finish(rh_digest_acc_sum(&acc), live);
    return 0;
}

/* ---- snapshots -----------------------------------------------------------
 * A checkpoint copies only the arena, under the store's lock, into memory
 * allocated and faulted in before it (rh_arena_prepare): the writers' pause
 * is one memcpy. The snapshot's columns and digest are made from the copy's
 * arena afterwards, which needs no slots. */

/* Makes dst (empty) an arena of at least `bytes`, every page faulted in.
 * Not advised for huge pages: the copy is read once, in order, and on this
 * kind of VM a huge-page fault can wait on compaction (measured: 14 to 250
 * ms for 120 MiB, against a steady 40 ms for 4 KiB pages). */
static int rh_arena_prepare(rh_kv *dst, uint64_t bytes)
{
    memset(dst, 0, sizeof(*dst));
    if (bytes < RH_ARENA_BASE)
        bytes = RH_ARENA_BASE;
#if defined(__linux__) && defined(MREMAP_MAYMOVE) && defined(MAP_POPULATE)
    bytes = (bytes + 4095) & ~(uint64_t)4095;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    dst->arena = (unsigned char *)p;
    dst->arena_cap = bytes;
    dst->arena_mapped = 1;
#else
    if (rh_arena_resize(dst, bytes) < 0)
        return -1;
    for (uint64_t i = 0; i < dst->arena_cap; i += 4096)
        dst->arena[i] = 0;
#endif
    dst->arena_len = RH_ARENA_BASE;
    return 0;
}

/* Copies src's arena into dst (from rh_arena_prepare); 0, or 1 when dst is
 * too small (nothing copied). */
static int rh_arena_copy(const rh_kv *src, rh_kv *dst)
{
    if (src->arena_len > dst->arena_cap)
        return 1;
    if (src->arena_len)
        memcpy(dst->arena, src->arena, src->arena_len);
    dst->arena_len = src->arena_len ? src->arena_len : RH_ARENA_BASE;
    dst->count = src->count;
    dst->garbage = src->garbage;
    return 0;
}

/* Puts the entry at `off` (whose key hashes to `hash`) into the first empty
 * slot of its probe sequence: 0, or 1 when an entry with the same key is
 * already there (the key is compared only on a full-hash match). For bulk
 * loads, which build the slots without rh_put: the arena already holds the
 * entry and the slot array has room. */
static inline int rh_slot_place(rh_kv *kv, uint64_t hash, uint64_t off)
{
    uint64_t mask = kv->mask, j = hash & mask;
    while (kv->slots[j].off) {
        if (kv->slots[j].hash == hash) {
            const rh_entry *e = rh_entry_at(kv, off);
            rh_key k;
            rh_key_from_bytes(&k, (const unsigned char *)(e + 1), e->klen);
            if (rh_key_eq(kv, kv->slots[j].off, &k))
                return 1;
        }
        j = (j + 1) & mask;
    }
    kv->slots[j].hash = hash;
    kv->slots[j].off = off;
    return 0;
}

/* Adds n pairs of Arrow-style binary columns (already checked: offsets in
 * bounds and ordered, keys well formed) to a table, adding each pair's
 * entry hash to *acc when it is not NULL. 0, -1 (no memory) or 1 (a key twice, new or already there); on
 * failure the table is emptied.
 *
 * Why not n puts: a put probes a random slot, and at 1.8M keys the slot
 * array (64 MiB) misses cache and TLB on nearly every probe. Here the
 * entries are appended to the arena in input order (sequential), their
 * (hash, offset) pairs are bucketed by the top bits of their home slot (a
 * one-pass radix partition), and the slots are then filled bucket by bucket,
 * so every probe lands in a window of a few KiB that is already in cache. */
/* The sum of the entry hashes of n pairs of binary columns, checking each
 * offset as it goes (the columns are untrusted and may not be checked yet):
 * 0, or -1 at the first offset out of order or bounds. */
static int rh_pairs_digest_sum(uint64_t n, const int32_t *koff, const unsigned char *kdata,
                               uint64_t klimit, const int32_t *voff,
                               const unsigned char *vdata, uint64_t vlimit, uint64_t *sum)
{
    rh_digest_acc acc;
    rh_digest_acc_init(&acc);
    for (uint64_t i = 0; i < n; i++) {
        int32_t a = koff[i], b = koff[i + 1], c = voff[i], d = voff[i + 1];
        if (a < 0 || b < a || (uint64_t)b > klimit || c < 0 || d < c || (uint64_t)d > vlimit)
            return -1;
        rh_digest_acc_add(&acc, kdata + a, (uint32_t)(b - a), vdata + c, (uint32_t)(d - c));
    }
    *sum = rh_digest_acc_sum(&acc);
    return 0;
}

#define RH_BULK_BUCKET_BITS 14
static int rh_bulk_load(rh_kv *kv, uint64_t n, const int32_t *koff,
                        const unsigned char *kdata, const int32_t *voff,
                        const unsigned char *vdata, rh_digest_acc *acc)
{
    uint64_t total = 0, i;
    if (n == 0)
        return 0;
    for (i = 0; i < n; i++)
        total += rh_entry_size((uint32_t)(koff[i + 1] - koff[i]),
                               (uint32_t)(voff[i + 1] - voff[i]));
    uint64_t cap = rh_capacity_for(kv->count + n);
    if (kv->slots == NULL || cap > kv->mask + 1)
        if (rh_resize(kv, cap) < 0)
            return -1;
    if (kv->arena_len == 0)
        kv->arena_len = RH_ARENA_BASE;
    if (kv->arena == NULL || kv->arena_cap - kv->arena_len < total)
        if (rh_arena_resize(kv, kv->arena_len + total) < 0)
            return -1;
    uint64_t mask = kv->mask, nslots = mask + 1;
    int slot_bits = 0;
    while (((uint64_t)1 << slot_bits) < nslots)
        slot_bits++;
    int bbits = slot_bits < RH_BULK_BUCKET_BITS ? slot_bits : RH_BULK_BUCKET_BITS;
    int shift = slot_bits - bbits;
    uint64_t nb = (uint64_t)1 << bbits;
    /* (hash, offset) of each new entry: in the slot array itself when the
     * table is empty (it holds at least n / 0.7 slots), else apart. */
    int fresh = kv->count == 0;
    uint64_t *count = (uint64_t *)calloc(nb + 1, sizeof(uint64_t));
    rh_slot *sorted = (rh_slot *)malloc(n * sizeof(rh_slot));
    rh_slot *scratch = fresh ? kv->slots : (rh_slot *)malloc(n * sizeof(rh_slot));
    if (!count || !sorted || !scratch) {
        free(count);
        free(sorted);
        if (!fresh)
            free(scratch);
        return -1;
    }
    /* Pass 1: entries appended in input order. */
    uint64_t off = kv->arena_len;
    for (i = 0; i < n; i++) {
        const unsigned char *kb = kdata + koff[i];
        uint32_t klen = (uint32_t)(koff[i + 1] - koff[i]);
        const unsigned char *v = vdata + voff[i];
        uint32_t vlen = (uint32_t)(voff[i + 1] - voff[i]);
        rh_key k;
        rh_key_from_bytes(&k, kb, klen);
        rh_entry *e = rh_entry_at(kv, off);
        uint64_t size = rh_entry_size(klen, vlen);
        e->klen = klen;
        e->vlen = vlen;
        e->vcap = (uint32_t)(size - sizeof(rh_entry) - klen);
        memcpy(rh_entry_key(e), kb, klen);
        memcpy(rh_entry_key(e) + klen, v, vlen);
        if (acc)
            rh_digest_acc_add(acc, kb, klen, v, vlen);
        scratch[i].hash = k.hash;
        scratch[i].off = off;
        count[((k.hash & mask) >> shift) + 1]++;
        off += size;
    }
    kv->arena_len = off;
    /* Pass 2: partition by bucket (stable, so equal keys keep their order). */
    for (i = 1; i <= nb; i++)
        count[i] += count[i - 1];
    for (i = 0; i < n; i++)
        sorted[count[(scratch[i].hash & mask) >> shift]++] = scratch[i];
    free(count);
    if (fresh)
        memset(kv->slots, 0, nslots * sizeof(rh_slot));
    else
        free(scratch);
    /* Pass 3: slots, bucket by bucket. */
    for (i = 0; i < n; i++) {
        if (rh_slot_place(kv, sorted[i].hash, sorted[i].off)) {
            free(sorted);
            rh_clear(kv);
            return 1;
        }
    }
    free(sorted);
    kv->count += n;
    kv->version++;
    return 0;
}

#endif
