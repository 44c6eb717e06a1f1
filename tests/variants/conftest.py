"""Variant files that tests load as a reviewer would (``kvmviz.variants.load``), not test modules."""

collect_ignore = ["does_not_import.py", "wrong_srcu.py"]
