#include <string.h>
static int depth;
void note(int x) { depth += x; }                 /* void: jmp __cyg_profile_func_exit */
int fib(int n) { if (n < 2) return n; return fib(n - 1) + fib(n - 2); }
int classify(const char *s) {
    if (!s) return -1;
    size_t n = strlen(s);
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++) if (s[i] == 'x') return 2;
    note(1);
    return 1;
}
int depth_now(void) { return depth; }
