/* bench/per_object.py: twelve small functions, the object a per-object build rule nops right after compiling it. */
int f1(int x) { return x * 3 + 1; }
int f2(int x) { return f1(x) ^ 7; }
int f3(int x) { int s = 0; for (int i = 0; i < x; i++) s += f2(i); return s; }
int f4(int a, int b) { return a > b ? f3(a) : f3(b); }
static int f5(int x) { return x < 2 ? x : f5(x - 1) + f5(x - 2); }
int f6(int x) { return f5(x) + f4(x, x + 1); }
int f7(const char *s) { int n = 0; while (*s++) n++; return n; }
int f8(const int *a, int n) { int m = a[0]; for (int i = 1; i < n; i++) if (a[i] > m) m = a[i]; return m; }
int f9(const int *a, int n) { int m = a[0]; for (int i = 1; i < n; i++) if (a[i] < m) m = a[i]; return m; }
unsigned f10(unsigned x) { x ^= x << 13; x ^= x >> 17; x ^= x << 5; return x; }
int f11(int a, int b) { while (b) { int t = a % b; a = b; b = t; } return a; }
int f12(int x) { return f11(x, f10(x)) + f9(&x, 1) + f8(&x, 1) + f7("abc"); }
