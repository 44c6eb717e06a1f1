"""A reviewer's own variant, loaded from a file: ``path/to/file.py:ClassName``.

Loading runs the file as Python, as a test runner runs a test file: only
load files you would run. The class must subclass ``kvmviz.MergedProtocol``
(``docs/writing-a-variant.md``); it is registered under the spec itself,
so ``VM(variant="path/to/file.py:ClassName")`` and a recipe's ``variant``
line name it like a shipped variant.

>>> import pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "mine.py"
>>> _ = path.write_text("from kvmviz import MergedProtocol\\nclass Mine(MergedProtocol):\\n    pass\\n")
>>> name = load(f"{path}:Mine"); describe(name).protocol.__name__, is_spec(name), is_spec("seed")
('Mine', True, False)
>>> load(f"{path}:Yours")
Traceback (most recent call last):
...
kvmviz.variants.load.VariantError: variant ...mine.py:Yours: ...mine.py has no class Yours (it defines: Mine)
"""

import hashlib
import importlib.util
import inspect
import os
import sys
import traceback

from ..engine.tree.protocol import MergedProtocol
from ..engine.variant import describe, names, register, resolve

#: Files loaded by ``load``, absolute path -> spec, to tell the user's frames in a traceback.
LOADED = {}


class VariantError(ValueError):
    """A variant file that does not load, a class that is not a protocol, or a variant method that raised.

    One line for the reader; the original exception is ``__cause__`` (for ``--debug``).
    """


def is_spec(text):
    """True for ``FILE.py:Class`` (a file to load), False for a variant name."""
    path, sep, cls = str(text).rpartition(":")
    return bool(sep) and path.endswith(".py") and cls.isidentifier()


def load(spec):
    """Import ``FILE.py:Class``, check it is a protocol, register it as ``spec``; returns ``spec``."""
    path, _, cls_name = spec.rpartition(":")
    if not is_spec(spec):
        raise VariantError(f"variant {spec}: write a file and a class as path/to/file.py:ClassName")
    if not os.path.isfile(path):
        raise VariantError(f"variant {spec}: no such file {path}")
    module = _import(spec, path)
    cls = getattr(module, cls_name, None)
    if cls is None:
        found = ", ".join(n for n, v in vars(module).items() if isinstance(v, type) and v.__module__ == module.__name__)
        raise VariantError(f"variant {spec}: {path} has no class {cls_name} (it defines: {found or 'no class'})")
    if not (isinstance(cls, type) and issubclass(cls, MergedProtocol)):
        raise VariantError(f"variant {spec}: {cls_name} is not a protocol: make it a subclass of "
                           "kvmviz.MergedProtocol")
    doc = (cls.__doc__ or "").strip().split("\n")[0]
    register(spec, cls, description=doc or f"{cls_name} from {path}",
             source=f"the reviewer's file {path}, run as Python by kvmviz")
    return spec


def _import(spec, path):
    full = os.path.abspath(path)
    name = "kvmviz_variant_" + hashlib.sha1(full.encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module          # dataclasses and pickling look their module up
    LOADED[full] = spec
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        del sys.modules[name]
        raise VariantError(f"variant {spec}: {path} does not import: {_what(e)}{_where(e, full)}") from e
    return module


def _what(e):
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _where(e, full):
    if isinstance(e, SyntaxError) and e.lineno:
        return f" (line {e.lineno})"
    frame = user_frame(e, full)
    return f" (line {frame.lineno})" if frame else ""


def user_frame(e, full=None):
    """The innermost traceback frame of ``e`` in a loaded variant file (or in ``full``), else None."""
    files = {full} if full else set(LOADED)
    frames = [f for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) in files]
    return frames[-1] if frames else None


def raised(e, variant):
    """``VariantError`` for exception ``e`` that a variant method raised, naming method, file and line."""
    frame = user_frame(e)
    where = f" in {frame.name} ({os.path.relpath(frame.filename)} line {frame.lineno})" if frame else ""
    err = VariantError(f"variant {variant}{where} raised {_what(e)}")
    err.__cause__ = e
    return err


def variant_name(variant):
    """A name ``VM(variant=...)`` and a recipe accept for ``variant`` (a name or a protocol class).

    An unregistered class is registered as ``FILE.py:Class`` of the file that defines it.

    >>> variant_name("seed"), variant_name(MergedProtocol)
    ('seed', 'merged')
    """
    if isinstance(variant, str):
        return load(variant) if is_spec(variant) and variant not in names() else describe(variant).name
    known = resolve(variant)
    if known.name in names() and describe(known.name).protocol is variant:
        return known.name
    spec = f"{os.path.relpath(inspect.getsourcefile(variant))}:{variant.__qualname__}"
    register(spec, variant, description=known.description, source=f"the reviewer's file {spec.rpartition(':')[0]}")
    LOADED[os.path.abspath(spec.rpartition(":")[0])] = spec
    return spec
