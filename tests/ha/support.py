"""Support of the HA tests: the fault tests' shim process wrapper (tests/shim/conftest.py),
loaded by path as a plain module so both suites drive the shim the same way, and why the
HA tests cannot run on a machine."""

from __future__ import annotations

import importlib.util
import os
import sys


HERE = os.path.dirname(__file__)
SHIM_TESTS = os.path.join(os.path.dirname(HERE), "shim")
for d in (HERE, SHIM_TESTS):
    if d not in sys.path:
        sys.path.insert(0, d)


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


#: tests/shim/conftest.py as a plain module (its ShimProcess), not as a second conftest
shim_support = _load("k8s_sql_shim_test_support", os.path.join(SHIM_TESTS, "conftest.py"))


def pg_auto_failover_missing() -> str | None:
    """Why the HA tests cannot run here, or None. A missing pg_autoctl is not a reason: the
    tests then fail (CI installs it), so they are never skipped unnoticed."""
    if os.getuid() != 0:
        return "needs root (runs pg_autoctl as the postgres OS user, and network namespaces)"
    return None
