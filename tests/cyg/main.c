#include <stdio.h>
int fib(int); int classify(const char *); void note(int); int depth_now(void);
static void step(int i) { note(i & 1); }
int main(int argc, char **argv) {
    long sum = 0;
    for (int i = 0; i < 20; i++) { sum += fib(i % 12); step(i); }
    for (int i = 0; i < argc; i++) sum += classify(argv[i]);
    sum += classify("abc") + classify("x") + classify("");
    printf("%ld %d\n", sum, depth_now());
    return 0;
}
