"""tests/ha and tests/shim on sys.path (the HA tests use the shim tests' load threads)."""

import os
import sys

HERE = os.path.dirname(__file__)
for d in (HERE, os.path.join(os.path.dirname(HERE), "shim")):
    if d not in sys.path:
        sys.path.insert(0, d)
