// The C++ half of the launcher example: CMAKE_CXX_COMPILER_LAUNCHER nops its objects too.
#include <cstdio>
#include <string>

namespace greet {
std::string line(const std::string &who) { return "hello, " + who; }
}  // namespace greet

int main(int argc, char **argv) {
    std::puts(greet::line(argc > 1 ? argv[1] : "world").c_str());
    return 0;
}
