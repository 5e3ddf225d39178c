"""The extra Python package of the contract check's `extraPythonPackages` case: typed (PEP 561),
so mypy checks a test script's use of it, and with a dependency of its own."""

from ntd_check_dep import base


def answer() -> int:
    return base() + 2
