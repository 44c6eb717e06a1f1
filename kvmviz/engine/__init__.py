"""The model: pure Python, no clock, no plotting; every front end (viz, CLI, lessons) sits above it.

>>> __version__
'0.1.0'
"""

#: kvmviz's version (recipes record it; ``kvmviz.__version__`` is this).
__version__ = "0.1.0"
