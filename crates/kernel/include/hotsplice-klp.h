/* hotsplice-klp.h — callbacks, shadow data and syscall bodies in kernel live patches.
 *
 * `hotsplice build --kernel` makes this header (and the kpatch-compatible kpatch-macros.h and
 * kpatch-syscall.h) visible to the translation units it compiles, after the kernel's own
 * include directories:
 *
 *   #include "hotsplice-klp.h"
 *
 *   // Callbacks (livepatch's klp_callbacks) of the object this file is part of — vmlinux,
 *   // or the module it is built into (run when that module loads, if it loads later):
 *   static int  before(struct klp_object *obj) { ...; return 0; }   // non-zero: refuse
 *   static void after(struct klp_object *obj) { ... }
 *   HOTSPLICE_KLP_PRE_PATCH(before);     HOTSPLICE_KLP_POST_PATCH(after);
 *   HOTSPLICE_KLP_PRE_UNPATCH(fn);       HOTSPLICE_KLP_POST_UNPATCH(fn);
 *
 *   // Shadow data: the kernel's own klp_shadow_get/alloc/get_or_alloc/free/free_all
 *   // (<linux/livepatch.h>, included here), callable from patched code.
 *
 *   // A syscall whose body changes: write it with HOTSPLICE_SYSCALL_DEFINEn instead of
 *   // SYSCALL_DEFINEn. The body (__do_sys_NAME, an inline and so untraceable function
 *   // livepatch cannot redirect) becomes a new function, and the traceable wrappers that call
 *   // it (__x64_sys_NAME, __ia32_sys_NAME) are what the patch replaces.
 *
 * One callback of each kind per translation unit.
 */
#ifndef HOTSPLICE_KLP_H
#define HOTSPLICE_KLP_H

#include <linux/compiler.h>
#include <linux/livepatch.h>

typedef int (*hotsplice_klp_pre_t)(struct klp_object *obj);
typedef void (*hotsplice_klp_post_t)(struct klp_object *obj);

/* A pointer to the callback in section .hotsplice.<kind>: the build finds it there. */
#define HOTSPLICE_KLP_CALLBACK_(kind, type, fn)                                       \
	static type __hotsplice_klp_##kind __used __section(".hotsplice." #kind) = fn

#define HOTSPLICE_KLP_PRE_PATCH(fn) HOTSPLICE_KLP_CALLBACK_(pre_apply, hotsplice_klp_pre_t, fn)
#define HOTSPLICE_KLP_POST_PATCH(fn) HOTSPLICE_KLP_CALLBACK_(post_apply, hotsplice_klp_post_t, fn)
#define HOTSPLICE_KLP_PRE_UNPATCH(fn) HOTSPLICE_KLP_CALLBACK_(pre_undo, hotsplice_klp_post_t, fn)
#define HOTSPLICE_KLP_POST_UNPATCH(fn) HOTSPLICE_KLP_CALLBACK_(post_undo, hotsplice_klp_post_t, fn)

#define HOTSPLICE_SYSCALL_DEFINE1(name, ...) HOTSPLICE_SYSCALL_DEFINEx(1, _##name, __VA_ARGS__)
#define HOTSPLICE_SYSCALL_DEFINE2(name, ...) HOTSPLICE_SYSCALL_DEFINEx(2, _##name, __VA_ARGS__)
#define HOTSPLICE_SYSCALL_DEFINE3(name, ...) HOTSPLICE_SYSCALL_DEFINEx(3, _##name, __VA_ARGS__)
#define HOTSPLICE_SYSCALL_DEFINE4(name, ...) HOTSPLICE_SYSCALL_DEFINEx(4, _##name, __VA_ARGS__)
#define HOTSPLICE_SYSCALL_DEFINE5(name, ...) HOTSPLICE_SYSCALL_DEFINEx(5, _##name, __VA_ARGS__)
#define HOTSPLICE_SYSCALL_DEFINE6(name, ...) HOTSPLICE_SYSCALL_DEFINEx(6, _##name, __VA_ARGS__)

/* The syscall's metadata (ftrace's syscall events) exactly as SYSCALL_DEFINEx makes it, so
 * it is unchanged data; the x86-64 wrappers of <asm/syscall_wrapper.h> around a body with
 * another name. */
#define HOTSPLICE_SYSCALL_DEFINEx(x, sname, ...)                                      \
	SYSCALL_METADATA(sname, x, __VA_ARGS__)                                        \
	__HOTSPLICE_SYSCALL_DEFINEx(x, sname, __VA_ARGS__)

#define __HOTSPLICE_SYSCALL_DEFINEx(x, name, ...)                                     \
	static long __se_sys##name(__MAP(x, __SC_LONG, __VA_ARGS__));                  \
	static inline long __hotsplice_do_sys##name(__MAP(x, __SC_DECL, __VA_ARGS__)); \
	__X64_SYS_STUBx(x, name, __VA_ARGS__)                                          \
	__IA32_SYS_STUBx(x, name, __VA_ARGS__)                                         \
	static long __se_sys##name(__MAP(x, __SC_LONG, __VA_ARGS__))                   \
	{                                                                              \
		long ret = __hotsplice_do_sys##name(__MAP(x, __SC_CAST, __VA_ARGS__)); \
		__MAP(x, __SC_TEST, __VA_ARGS__);                                      \
		__PROTECT(x, ret, __MAP(x, __SC_ARGS, __VA_ARGS__));                   \
		return ret;                                                            \
	}                                                                              \
	static inline long __hotsplice_do_sys##name(__MAP(x, __SC_DECL, __VA_ARGS__))

#endif /* HOTSPLICE_KLP_H */
