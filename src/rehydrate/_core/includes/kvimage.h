/* The KV table image: a snapshot file a native open maps instead of
 * rebuilding the table from its Arrow file (docs/snapshots.md, FORMAT.md).
 *
 *   header   4096 bytes: "RHKVIMG1", u32 version (1), u32 slot_bits
 *            (log2 slots), u64 count, u64 arena_len, u64 slots, rest zero
 *   arena    arena_len bytes at offset 4096: 8 zero bytes (offset 0 means
 *            "empty slot"), then `count` live entries exactly as kvcore.h
 *            lays them out ({klen, vlen, vcap}, key, value, 8-aligned, vcap
 *            the rounding slack only, zero padding), ordered by home slot
 *            (hash & (slots - 1)), then the rest of the hash, then the key.
 *
 * Why this shape: the arena is mapped copy-on-write (MAP_PRIVATE) straight
 * from the page cache, so an open allocates nothing for it and copies
 * nothing; only the slot array is fresh memory. The slots are not stored:
 * walking the arena in home-slot order fills the slot array front to back
 * (the hardware prefetcher streams it), so rebuilding them costs about what
 * checking the entries costs, and the walk is the check: every header
 * field, every key and every entry's place is verified as the slots are
 * filled. Bytes on
 * disk are untrusted: nothing is read before its bounds are checked, and a
 * bad image leaves the table empty.
 */
#ifndef RH_KVIMAGE_H
#define RH_KVIMAGE_H
#include <stdint.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#include <sys/stat.h>
#endif
#include "kvcore.h"
#include "payload.h"

#define RH_IMG_HEADER 4096u
#define RH_IMG_VERSION 1u
#define RH_IMG_MAX_KEY (1024u * 1024u + 1u)

enum rh_img_err {
    RH_IMG_OK = 0,
    RH_IMG_NOMEM = -1,
    RH_IMG_BAD_HEADER = 1,   /* magic, version, sizes */
    RH_IMG_BAD_ENTRY = 2,    /* an entry's fields or key */
    RH_IMG_BAD_ORDER = 3,    /* an entry out of home-slot order */
    RH_IMG_DUPLICATE = 4,    /* a key twice */
    RH_IMG_COUNT = 5,        /* another number of entries than the header's */
    RH_IMG_MAP = 6,          /* mmap failed */
};

static inline int rh_img_slot_bits(uint64_t slots)
{
    int b = 0;
    while (((uint64_t)1 << b) < slots)
        b++;
    return b;
}

static inline void rh_img_put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static inline void rh_img_put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static inline uint64_t rh_img_get(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

typedef struct {
    uint32_t version, slot_bits;
    uint64_t count, arena_len, slots;
} rh_img_header;

/* Parses and checks the header (all RH_IMG_HEADER bytes at p) against the
 * file's size. */
static int rh_img_read_header(const unsigned char *p, uint64_t file_size, rh_img_header *h)
{
    if (file_size < RH_IMG_HEADER || memcmp(p, "RHKVIMG1", 8) != 0)
        return RH_IMG_BAD_HEADER;
    h->version = (uint32_t)rh_img_get(p + 8, 4);
    h->slot_bits = (uint32_t)rh_img_get(p + 12, 4);
    h->count = rh_img_get(p + 16, 8);
    h->arena_len = rh_img_get(p + 24, 8);
    h->slots = rh_img_get(p + 32, 8);
    if (h->version != RH_IMG_VERSION || h->arena_len < RH_ARENA_BASE ||
        h->arena_len != file_size - RH_IMG_HEADER || (h->arena_len & 7) ||
        h->count > (h->arena_len - RH_ARENA_BASE) / 16 || /* an entry takes >= 16 bytes */
        h->slots != rh_capacity_for(h->count) ||
        h->slot_bits != (uint32_t)rh_img_slot_bits(h->slots))
        return RH_IMG_BAD_HEADER;
    for (unsigned i = 40; i < RH_IMG_HEADER; i++)
        if (p[i])
            return RH_IMG_BAD_HEADER;
    return RH_IMG_OK;
}

/* ---- writing ------------------------------------------------------------ */

/* The image size for the live entries of src (a table or a checkpoint's
 * arena copy); *arena_len gets the arena section's size. */
static uint64_t rh_img_size(const rh_kv *src, uint64_t *arena_len)
{
    uint64_t off = 0, len = RH_ARENA_BASE;
    const rh_entry *e;
    while ((e = rh_arena_next(src, &off)) != NULL)
        len += rh_entry_size(e->klen, e->vlen);
    *arena_len = len;
    return RH_IMG_HEADER + len;
}

/* The sort key of an entry: its home slot (the low slot_bits of the hash)
 * first, then the rest of the hash, so the order depends on the keys only. */
static inline uint64_t rh_img_order(uint64_t hash, int sbits)
{
    if (sbits == 0)
        return hash;
    return (hash << (64 - sbits)) | (hash >> sbits);
}

/* Key bytes order, for the (astronomically rare) keys whose hashes are equal. */
static inline int rh_img_key_cmp(const rh_kv *src, uint64_t a, uint64_t b)
{
    const rh_entry *x = rh_entry_at(src, a), *y = rh_entry_at(src, b);
    uint32_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = memcmp(x + 1, y + 1, n);
    return c ? c : (x->klen > y->klen) - (x->klen < y->klen);
}

/* Writes src's image into out (rh_img_size bytes): entries compacted and
 * ordered by home slot, then by the rest of their hash, then by key (an LSD
 * radix sort on 16-bit digits), so that an open fills the slot array front
 * to back, and the image's bytes depend on the content only. 0, or -1 (no
 * memory). */
static int rh_img_build(const rh_kv *src, unsigned char *out, uint64_t arena_len)
{
    uint64_t slots = rh_capacity_for(src->count), mask = slots - 1, n = src->count;
    uint64_t off = 0, i, j = 0;
    int sbits = rh_img_slot_bits(slots);
    const rh_entry *e;
    rh_key k;
    rh_slot *a = (rh_slot *)malloc((n ? n : 1) * sizeof(rh_slot));
    rh_slot *b = (rh_slot *)malloc((n ? n : 1) * sizeof(rh_slot));
    uint64_t *count = (uint64_t *)malloc(65537 * sizeof(uint64_t));
    if (!a || !b || !count) {
        free(a);
        free(b);
        free(count);
        return -1;
    }
    memset(out, 0, RH_IMG_HEADER + RH_ARENA_BASE);
    memcpy(out, "RHKVIMG1", 8);
    rh_img_put_u32(out + 8, RH_IMG_VERSION);
    rh_img_put_u32(out + 12, (uint32_t)sbits);
    rh_img_put_u64(out + 16, n);
    rh_img_put_u64(out + 24, arena_len);
    rh_img_put_u64(out + 32, slots);
    while ((e = rh_arena_next(src, &off)) != NULL && j < n) {
        rh_key_from_bytes(&k, (const unsigned char *)(e + 1), e->klen);
        a[j].hash = rh_img_order(k.hash, sbits);
        a[j].off = (uint64_t)((const unsigned char *)e - src->arena);
        j++;
    }
    (void)mask;
    for (int shift = 0; shift < 64; shift += 16) {
        memset(count, 0, 65537 * sizeof(uint64_t));
        for (i = 0; i < j; i++)
            count[((a[i].hash >> shift) & 0xFFFF) + 1]++;
        for (i = 1; i <= 65536; i++)
            count[i] += count[i - 1];
        for (i = 0; i < j; i++)
            b[count[(a[i].hash >> shift) & 0xFFFF]++] = a[i];
        rh_slot *t = a;
        a = b;
        b = t;
    }
    /* Equal hashes (different keys): by key bytes, insertion sort per run. */
    for (i = 1; i < j; i++) {
        rh_slot x = a[i];
        uint64_t m = i;
        while (m > 0 && a[m - 1].hash == x.hash && rh_img_key_cmp(src, a[m - 1].off, x.off) > 0) {
            a[m] = a[m - 1];
            m--;
        }
        a[m] = x;
    }
    unsigned char *arena = out + RH_IMG_HEADER;
    uint64_t pos = RH_ARENA_BASE;
    for (i = 0; i < j; i++) {
        e = (const rh_entry *)(src->arena + a[i].off);
        uint64_t size = rh_entry_size(e->klen, e->vlen);
        rh_entry *d = (rh_entry *)(arena + pos);
        d->klen = e->klen;
        d->vlen = e->vlen;
        d->vcap = (uint32_t)(size - sizeof(rh_entry) - e->klen);
        memcpy(d + 1, e + 1, (size_t)e->klen + e->vlen);
        /* zero the padding: an image's bytes depend only on the content */
        memset((unsigned char *)(d + 1) + e->klen + e->vlen, 0,
               size - sizeof(rh_entry) - e->klen - e->vlen);
        pos += size;
    }
    free(a);
    free(b);
    free(count);
    return 0;
}

/* ---- reading ------------------------------------------------------------ */

/* Checks the entry at off of an arena of len bytes; its size, or 0. */
static inline uint64_t rh_img_entry_ok(const unsigned char *arena, uint64_t off, uint64_t len)
{
    if (len - off < sizeof(rh_entry))
        return 0;
    const rh_entry *e = (const rh_entry *)(arena + off);
    uint32_t klen = e->klen, vlen = e->vlen, vcap = e->vcap;
    if (klen < 1 || klen > RH_IMG_MAX_KEY || vlen < 1 || vlen > vcap || vcap > RH_VALUE_MAX)
        return 0;
    uint64_t size = rh_entry_size(klen, vcap);
    if (size > len - off || size != rh_entry_size(klen, vlen) ||
        vcap != size - sizeof(rh_entry) - klen)
        return 0; /* past the end, or vcap other than the 8-byte rounding's */
    if (!rh_key_wellformed((const unsigned char *)(e + 1), klen))
        return 0;
    const unsigned char *pad = (const unsigned char *)(e + 1) + klen + vlen;
    for (uint64_t i = 0; i < size - sizeof(rh_entry) - klen - vlen; i++)
        if (pad[i])
            return 0; /* the padding is zero: the bytes depend on the content only */
    return size;
}

/* Fills kv's slots from the arena already in kv (arena_len bytes, from an
 * image), checking every entry, the home-slot order and the count as it goes.
 * kv must have no slots yet. RH_IMG_OK or an error (kv then keeps its
 * arena; the caller clears it). */
static int rh_img_index(rh_kv *kv, const rh_img_header *h)
{
    const unsigned char *arena = kv->arena;
    uint64_t len = h->arena_len, off = RH_ARENA_BASE, n = 0, last_home = 0;
    if (rh_resize(kv, h->slots) < 0)
        return RH_IMG_NOMEM;
    uint64_t mask = kv->mask;
    for (uint64_t i = 0; i < RH_ARENA_BASE; i++)
        if (arena[i])
            return RH_IMG_BAD_ENTRY;
    while (off < len) {
        uint64_t size = rh_img_entry_ok(arena, off, len);
        if (!size)
            return RH_IMG_BAD_ENTRY;
        const rh_entry *e = (const rh_entry *)(arena + off);
        rh_key k;
        rh_key_from_bytes(&k, (const unsigned char *)(e + 1), e->klen);
        uint64_t home = k.hash & mask;
        if (home < last_home)
            return RH_IMG_BAD_ORDER;
        last_home = home;
        if (++n > h->count)
            return RH_IMG_COUNT;
        if (rh_slot_place(kv, k.hash, off))
            return RH_IMG_DUPLICATE;
        off += size;
    }
    if (n != h->count)
        return RH_IMG_COUNT;
    kv->count = n;
    kv->arena_len = len;
    kv->version++;
    return RH_IMG_OK;
}

/* Maps the arena section of an image file (fd, file_size bytes, header
 * already checked into h) copy-on-write into an empty kv, inside a
 * reservation of twice its size so the table can grow without moving it,
 * and builds the slots. RH_IMG_OK, or an error with kv left empty. */
static int rh_img_map(rh_kv *kv, int fd, const rh_img_header *h)
{
#if defined(__linux__) && defined(MAP_FIXED) && defined(MAP_POPULATE)
    /* The file must still be as long as the header says: a mapped page past
     * its end is SIGBUS, not an error (a truncation after this check, by
     * another process, still is: docs/snapshots.md). */
    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size != RH_IMG_HEADER + h->arena_len)
        return RH_IMG_MAP;
    uint64_t map_len = (h->arena_len + 4095) & ~(uint64_t)4095;
    uint64_t reserve = 2 * map_len + ((uint64_t)1 << 20);
    void *base = mmap(NULL, reserve, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED)
        return RH_IMG_MAP;
    /* Populated read-only, then made writable: MAP_POPULATE on a writable
     * private mapping would copy every page at once (a write fault each);
     * this way pages stay the page cache's until the table writes them. */
    void *p = mmap(base, map_len, PROT_READ, MAP_PRIVATE | MAP_FIXED | MAP_POPULATE, fd,
                   RH_IMG_HEADER);
    if (p == MAP_FAILED || mprotect(p, map_len, PROT_READ | PROT_WRITE) != 0) {
        munmap(base, reserve);
        return RH_IMG_MAP;
    }
    kv->arena = (unsigned char *)base;
    kv->arena_cap = reserve;
    kv->arena_len = h->arena_len;
    kv->arena_mapped = 1;
    kv->arena_filemap = 1;
    int rc = rh_img_index(kv, h);
    if (rc != RH_IMG_OK)
        rh_clear(kv);
    return rc;
#else
    (void)kv;
    (void)fd;
    (void)h;
    return RH_IMG_MAP;
#endif
}

/* The entry-hash sum of an image's arena (checked as it walks, for a
 * second thread that runs beside rh_img_index): 0, or -1 on a bad entry or
 * another number of entries than `count`. */
static int rh_img_digest_sum(const unsigned char *arena, uint64_t len, uint64_t count,
                             uint64_t *sum)
{
    rh_digest_acc acc;
    uint64_t off = RH_ARENA_BASE, n = 0;
    rh_digest_acc_init(&acc);
    if (len < RH_ARENA_BASE)
        return -1;
    for (uint64_t i = 0; i < RH_ARENA_BASE; i++)
        if (arena[i])
            return -1;
    while (off < len) {
        uint64_t size = rh_img_entry_ok(arena, off, len);
        if (!size)
            return -1;
        const rh_entry *e = (const rh_entry *)(arena + off);
        if (off + RH_DIGEST_PREFETCH < len)
            RH_PREFETCH(arena + off + RH_DIGEST_PREFETCH);
        rh_digest_acc_add(&acc, (const unsigned char *)(e + 1), e->klen,
                          (const unsigned char *)(e + 1) + e->klen, e->vlen);
        off += size;
        n++;
    }
    if (n != count)
        return -1;
    *sum = rh_digest_acc_sum(&acc);
    return 0;
}

#endif
