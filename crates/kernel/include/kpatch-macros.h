/* kpatch-macros.h — the macros of kpatch's header of the same name, for hotsplice, so a
 * patch written for kpatch-build builds unchanged with `hotsplice build --kernel`.
 * Written for hotsplice on top of hotsplice-klp.h; see that file.
 *
 * Supported: KPATCH_{PRE,POST}_{PATCH,UNPATCH}_CALLBACK (callbacks take a patch_object *,
 * which is livepatch's struct klp_object), KPATCH_PRINTK, KPATCH_STATIC_CALL, and
 * KPATCH_SYSCALL_DEFINEn (kpatch-syscall.h). KPATCH_IGNORE_SECTION, KPATCH_IGNORE_FUNCTION
 * and KPATCH_FORCE_UNSAFE compile, but hotsplice refuses a patch that uses them (it does not
 * skip changes it found, nor bypass livepatch's consistency model).
 */
#ifndef __KPATCH_MACROS_H_
#define __KPATCH_MACROS_H_

#include <linux/compiler.h>
#include <linux/jiffies.h>
#include "hotsplice-klp.h"

typedef struct klp_object patch_object;

#define KPATCH_PRE_PATCH_CALLBACK(fn) HOTSPLICE_KLP_PRE_PATCH(fn)
#define KPATCH_POST_PATCH_CALLBACK(fn) HOTSPLICE_KLP_POST_PATCH(fn)
#define KPATCH_PRE_UNPATCH_CALLBACK(fn) HOTSPLICE_KLP_PRE_UNPATCH(fn)
#define KPATCH_POST_UNPATCH_CALLBACK(fn) HOTSPLICE_KLP_POST_UNPATCH(fn)

/* Markers hotsplice refuses (in section .hotsplice.refuse.*, which the build reports). */
#define KPATCH_IGNORE_SECTION(sec) \
	static const char *__UNIQUE_ID(kpatch_ignore_section_) __used \
		__section(".hotsplice.refuse.ignore_section") = sec
#define KPATCH_IGNORE_FUNCTION(fn) \
	static void *__kpatch_ignore_func_##fn __used \
		__section(".hotsplice.refuse.ignore_function") = fn
#define KPATCH_FORCE_UNSAFE(fn) \
	static void *__kpatch_force_func_##fn __used \
		__section(".hotsplice.refuse.force_unsafe") = fn

/* printk in a branch of its own, so the surrounding path is not made cold. */
#define KPATCH_PRINTK(fmt, ...)                   \
	({                                        \
		if (jiffies)                      \
			printk(fmt, ##__VA_ARGS__); \
	})

/* A static call made through the key's function pointer (an indirect call). */
#define KPATCH_STATIC_CALL(name) \
	((typeof(STATIC_CALL_TRAMP(name)) *)(STATIC_CALL_KEY(name).func))

#include "kpatch-syscall.h"

#endif /* __KPATCH_MACROS_H_ */
