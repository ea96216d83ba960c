/*
 * A hook for `ftpatch call --target profile_hook`: it counts its calls, and says how many at exit.
 *
 * It runs where mcount or __fentry__ ran: at __fentry__ before the caller's frame is built, at mcount after
 * its prologue, and at both with the caller's argument registers still live. So it saves every register it
 * touches (no_caller_saved_registers; -mgeneral-regs-only keeps it off the SSE registers, which the attribute
 * does not save), and it is built without -pg, or its own site would call it again:
 *
 *     gcc -O2 -mgeneral-regs-only -c examples/hook/hook.c -o hook.o
 *
 * Add -fPIC for a PIE or a shared library that defines it, -m32 for i386. clang takes the same.
 */
#include <stdio.h>

unsigned long profile_hook_calls;

__attribute__((no_caller_saved_registers)) void profile_hook(void)
{
	__atomic_fetch_add(&profile_hook_calls, 1, __ATOMIC_RELAXED);
}

/* After main returns: not a hook, an ordinary function, so it may call printf. */
__attribute__((destructor)) static void profile_hook_report(void)
{
	fprintf(stderr, "profile_hook: %lu calls\n", profile_hook_calls);
}
