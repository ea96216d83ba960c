#!/usr/bin/env python3
"""The corpus matrix from the command line: `python3 bench/corpus.py [list|fetch|build|check] [options]`.

The harness itself is tests/oracles/corpus.py, the oracle tests/test_corpus.py imports; see bench/README.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # a script: the tests' oracles, importable
from oracles.corpus import main

if __name__ == "__main__":
    sys.exit(main())
