"""One number parser for every front end (Stepper, CLI, recipes, exercises, traces).

Not a kernel function: the ioctl takes C integers, and these are the rules
by which kvmviz turns a typed word into one. A number is written

- in decimal (``4096``; no leading zero except ``0`` itself, since C's
  ``strtoul(s, NULL, 0)`` would read ``010`` as octal), or
- in hex with ``0x``/``0X`` (``0x1000``),

with ASCII digits only: no sign, no underscores, no spaces inside, no
exponent or fraction (``1e6``, ``1.5``). Python's ``int()`` would accept
``'٣'`` (Arabic-Indic three), full-width digits and ``1_000``; a learner's
typo or a mangled trace must not silently become some other slot. Leading
and trailing ASCII spaces and tabs are ignored; other white space (a
non-breaking space) is refused. A bool is never a number.

>>> parse_number("0x1000"), parse_number(" 42 "), parse_number(7)
(4096, 42, 7)
>>> parse_number("٣", "slot")
Traceback (most recent call last):
...
ValueError: slot: '٣' is not a number (decimal, or hex with 0x; ASCII digits, no sign)
>>> parse_number("70000", "slot", 1 << 16)
Traceback (most recent call last):
...
ValueError: slot: 70000 is outside 0..65535
"""

import re

_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|0|[1-9][0-9]*")


def check_number(value, what="number", limit=None, context=""):
    """``value`` if it is an int (not a bool) in ``0..limit-1``; else ``TypeError``/``ValueError``.

    For values that arrive as Python objects (the API); ``limit`` None means
    no upper bound; ``context`` is appended to the range message.

    >>> check_number(True, "gfn")
    Traceback (most recent call last):
    ...
    TypeError: gfn must be an int, not True
    >>> check_number(-1, "gfn")
    Traceback (most recent call last):
    ...
    ValueError: gfn: -1 is negative
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {value!r}")
    if value < 0:
        raise ValueError(f"{what}: {value} is negative")
    if limit is not None and value >= limit:
        raise ValueError(f"{what}: {value} is outside 0..{limit - 1}{context}")
    return value


def parse_number(text, what="number", limit=None):
    """A typed number (see the module doc), or an int passed through, checked against ``limit``.

    >>> parse_number("1e6")
    Traceback (most recent call last):
    ...
    ValueError: number: '1e6' is not a number (decimal, or hex with 0x; ASCII digits, no sign)
    """
    if isinstance(text, str):
        word = text.strip(" \t")
        if not _NUMBER.fullmatch(word):
            raise ValueError(f"{what}: {text!r} is not a number (decimal, or hex with 0x; ASCII digits, no sign)")
        text = int(word, 0)
    return check_number(text, what, limit)
