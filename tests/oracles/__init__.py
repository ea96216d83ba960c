"""The oracles the tests judge ftpatch by, each independent of ftpatch's own ELF reading.

- `groundtruth`: the profiling call sites of a linked file as binutils (objdump, readelf) resolve them.
- `elfsites`: a stdlib reader of objects: their call relocations and where `__mcount_loc`'s entries point
  (also what `bench/prepare.sh` and `bench/bench_recordmcount.py` check the benchmarks' output with).
- `corpus`: Debian's zlib, sqlite3 and tinyxml2 built with -pg in every variant, each linked file checked;
  `tests/test_corpus.py` runs a subset, `python3 bench/corpus.py` the whole matrix.
"""
