/* hotsplice.h — hooks and shadow data for live patches (C and C++).
 *
 * A fix that changes a data structure (adds a member to a struct live objects already use)
 * cannot be applied to a running program as written: the running objects have the old
 * layout. Rewrite it to keep the layout and attach the new member to each object as *shadow
 * data*, and, where existing objects need it, convert them in a hook that runs while the
 * patch is applied. See docs/semantic-patches.md for the method and its pitfalls.
 *
 *   #include <hotsplice.h>
 *
 *   // Shadow data: extra bytes attached to any object, by its address and an id.
 *   void *hotsplice_shadow_get(const void *obj, unsigned long id);
 *   void *hotsplice_shadow_alloc(const void *obj, unsigned long id, unsigned long size);
 *   void *hotsplice_shadow_get_or_alloc(const void *obj, unsigned long id, unsigned long size);
 *   void  hotsplice_shadow_free(const void *obj, unsigned long id);
 *   void  hotsplice_shadow_free_all(unsigned long id);
 *
 *   // Hooks: run in the program, in one thread, while every other thread is stopped.
 *   static int convert(void) { ...; return 0; }        // pre hooks: non-zero refuses
 *   HOTSPLICE_PRE_APPLY(convert);   HOTSPLICE_POST_APPLY(fn);
 *   HOTSPLICE_PRE_UNDO(fn);         HOTSPLICE_POST_UNDO(fn);
 *   return hotsplice_veto("why");   // in a pre hook: refuse, with a reason hotsplice prints
 *
 * Shadow memory comes from an arena in the patch's own memory (16 MiB of address space,
 * touched pages only), not from the program's allocator: hooks may allocate shadows while
 * the program's other threads are stopped (one of which may hold the malloc lock), and undo
 * frees every shadow by unmapping the patch memory. Zeroed on allocation. Reads take no lock
 * (a sequence counter detects a concurrent change and retries); allocation and freeing take a
 * spin lock held for a few instructions. The runtime lives in every patched object that
 * includes this header (static inline functions) and shares one state, placed by hotsplice
 * in the patch's memory (`__hotsplice_runtime`). Nothing is preloaded or prepared in the
 * target.
 *
 * A hook must not block on a lock another thread may hold (malloc, stdio, a mutex of the
 * program): every other thread is stopped while it runs, and hotsplice gives up on a hook
 * that does not return within a second (the apply or undo is then refused).
 */
#ifndef HOTSPLICE_H
#define HOTSPLICE_H

#ifdef __cplusplus
extern "C" {
#endif

#define HOTSPLICE_RUNTIME_MAGIC 0x3130305452535348ul /* "HSSRT001" */
#define HOTSPLICE_BUCKETS 1024
#define HOTSPLICE_CLASSES 12 /* 16, 32, ... 32768 bytes */
#define HOTSPLICE_ARENA (16ul << 20)

struct hotsplice_shadow {
    struct hotsplice_shadow *next;
    const void *obj;
    unsigned long id;
    unsigned long size; /* bytes of data, rounded to the size class */
    unsigned long klass;
    unsigned long pad;
    unsigned char data[] __attribute__((aligned(16)));
};

/* The shared state; hotsplice reserves it (and its arena) in the patch's memory. Its layout
 * is part of the contract with hotsplice (crates/apply/src/runtime.rs). */
struct hotsplice_runtime {
    unsigned long magic;
    unsigned long seq;  /* odd while a writer changes the table */
    int lock;
    int pad;
    unsigned long used; /* bytes of the arena handed out */
    unsigned long live; /* shadows allocated and not freed */
    unsigned long allocations;
    char veto[256];
    struct hotsplice_shadow *buckets[HOTSPLICE_BUCKETS];
    struct hotsplice_shadow *free[HOTSPLICE_CLASSES];
    unsigned char arena[HOTSPLICE_ARENA] __attribute__((aligned(64)));
};

/* Weak and hidden: the project's own link of the patched source (which never runs) leaves it
 * at 0; hotsplice gives it its place when it loads the patch. */
extern struct hotsplice_runtime __hotsplice_runtime
    __attribute__((weak, visibility("hidden")));

/* Hooks: a pointer to the function in a section hotsplice reads. */
#define HOTSPLICE_HOOK_(kind, fn)                                                          \
    static int (*const __hotsplice_hook_##kind##_##fn)(void)                               \
        __attribute__((used, section(".hotsplice." #kind))) = fn
#define HOTSPLICE_PRE_APPLY(fn) HOTSPLICE_HOOK_(pre_apply, fn)
#define HOTSPLICE_POST_APPLY(fn) HOTSPLICE_HOOK_(post_apply, fn)
#define HOTSPLICE_PRE_UNDO(fn) HOTSPLICE_HOOK_(pre_undo, fn)
#define HOTSPLICE_POST_UNDO(fn) HOTSPLICE_HOOK_(post_undo, fn)

static inline unsigned long hotsplice_hash_(const void *obj, unsigned long id)
{
    unsigned long h = (unsigned long)obj ^ (id * 0x9e3779b97f4a7c15ul);
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ul;
    h ^= h >> 32;
    return h & (HOTSPLICE_BUCKETS - 1);
}

static inline void hotsplice_lock_(struct hotsplice_runtime *rt)
{
    while (__atomic_exchange_n(&rt->lock, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&rt->lock, __ATOMIC_RELAXED))
            __builtin_ia32_pause();
    __atomic_store_n(&rt->seq, rt->seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

static inline void hotsplice_unlock_(struct hotsplice_runtime *rt)
{
    __atomic_store_n(&rt->seq, rt->seq + 1, __ATOMIC_RELEASE);
    __atomic_store_n(&rt->lock, 0, __ATOMIC_RELEASE);
}

/* The shadow of (obj, id), with the lock held or the table otherwise stable. */
static inline struct hotsplice_shadow *hotsplice_find_(struct hotsplice_runtime *rt,
                                                       const void *obj, unsigned long id)
{
    struct hotsplice_shadow *n =
        __atomic_load_n(&rt->buckets[hotsplice_hash_(obj, id)], __ATOMIC_ACQUIRE);
    for (unsigned long steps = 0; n && steps < (1ul << 20); steps++) {
        if (n->obj == obj && n->id == id)
            return n;
        n = __atomic_load_n(&n->next, __ATOMIC_ACQUIRE);
    }
    return 0;
}

static inline void *hotsplice_shadow_get(const void *obj, unsigned long id)
{
    struct hotsplice_runtime *rt = &__hotsplice_runtime;
    for (;;) {
        unsigned long before = __atomic_load_n(&rt->seq, __ATOMIC_ACQUIRE);
        if (before & 1) {
            __builtin_ia32_pause();
            continue;
        }
        struct hotsplice_shadow *n = hotsplice_find_(rt, obj, id);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&rt->seq, __ATOMIC_RELAXED) == before)
            return n ? (void *)n->data : 0;
    }
}

/* A new shadow; the lock is held and (obj, id) has none. */
static inline struct hotsplice_shadow *hotsplice_new_(struct hotsplice_runtime *rt,
                                                      const void *obj, unsigned long id,
                                                      unsigned long size)
{
    unsigned long klass = 0, bytes = 16;
    while (bytes < size && klass + 1 < HOTSPLICE_CLASSES) {
        bytes <<= 1;
        klass++;
    }
    if (bytes < size)
        return 0;
    struct hotsplice_shadow *n = rt->free[klass];
    if (n) {
        rt->free[klass] = n->next;
    } else {
        unsigned long need = sizeof(struct hotsplice_shadow) + bytes;
        if (rt->used + need > HOTSPLICE_ARENA)
            return 0;
        n = (struct hotsplice_shadow *)(rt->arena + rt->used);
        rt->used += need;
    }
    __builtin_memset(n->data, 0, bytes);
    n->obj = obj;
    n->id = id;
    n->size = bytes;
    n->klass = klass;
    unsigned long b = hotsplice_hash_(obj, id);
    n->next = rt->buckets[b];
    __atomic_store_n(&rt->buckets[b], n, __ATOMIC_RELEASE);
    rt->live++;
    rt->allocations++;
    return n;
}

static inline void *hotsplice_shadow_alloc(const void *obj, unsigned long id,
                                           unsigned long size)
{
    struct hotsplice_runtime *rt = &__hotsplice_runtime;
    hotsplice_lock_(rt);
    struct hotsplice_shadow *n = hotsplice_find_(rt, obj, id) ? 0 : hotsplice_new_(rt, obj, id, size);
    hotsplice_unlock_(rt);
    return n ? (void *)n->data : 0;
}

static inline void *hotsplice_shadow_get_or_alloc(const void *obj, unsigned long id,
                                                  unsigned long size)
{
    void *have = hotsplice_shadow_get(obj, id);
    if (have)
        return have;
    struct hotsplice_runtime *rt = &__hotsplice_runtime;
    hotsplice_lock_(rt);
    struct hotsplice_shadow *n = hotsplice_find_(rt, obj, id);
    if (!n)
        n = hotsplice_new_(rt, obj, id, size);
    hotsplice_unlock_(rt);
    return n ? (void *)n->data : 0;
}

/* Unlinks the shadows of bucket `b` that match; the lock is held. */
static inline void hotsplice_unlink_(struct hotsplice_runtime *rt, unsigned long b,
                                     const void *obj, unsigned long id, int any_obj)
{
    struct hotsplice_shadow **link = &rt->buckets[b];
    while (*link) {
        struct hotsplice_shadow *n = *link;
        if (n->id == id && (any_obj || n->obj == obj)) {
            __atomic_store_n(link, n->next, __ATOMIC_RELEASE);
            n->next = rt->free[n->klass];
            rt->free[n->klass] = n;
            rt->live--;
            if (!any_obj)
                return;
        } else {
            link = &n->next;
        }
    }
}

static inline void hotsplice_shadow_free(const void *obj, unsigned long id)
{
    struct hotsplice_runtime *rt = &__hotsplice_runtime;
    hotsplice_lock_(rt);
    hotsplice_unlink_(rt, hotsplice_hash_(obj, id), obj, id, 0);
    hotsplice_unlock_(rt);
}

static inline void hotsplice_shadow_free_all(unsigned long id)
{
    struct hotsplice_runtime *rt = &__hotsplice_runtime;
    hotsplice_lock_(rt);
    for (unsigned long b = 0; b < HOTSPLICE_BUCKETS; b++)
        hotsplice_unlink_(rt, b, 0, id, 1);
    hotsplice_unlock_(rt);
}

/* In a pre hook: refuse the apply (or undo), with a reason hotsplice reports. */
static inline int hotsplice_veto(const char *why)
{
    char *to = __hotsplice_runtime.veto;
    unsigned long i = 0;
    for (; why && why[i] && i + 1 < sizeof __hotsplice_runtime.veto; i++)
        to[i] = why[i];
    to[i] = 0;
    return 1;
}

#ifdef __cplusplus
}
#endif

#endif
