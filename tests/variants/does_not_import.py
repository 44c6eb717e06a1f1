"""A variant file with a typo: importing it fails (tests/test_check.py)."""

from kvmviz import MergedProtocl  # noqa: F401  (the typo under test)
