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
non-breaking space) is refused. A bool is never a number. ``signed=True``
also reads a leading ``-`` (an exercise's ``-1`` for "none"; the CLI, to say
"-1 is negative"). Errnos are read by name or number (``parse_errno``).

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

import errno
import re

_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|0|[1-9][0-9]*")
_SIGNED = re.compile(r"-?(?:0[xX][0-9a-fA-F]+|0|[1-9][0-9]*)")
#: The largest errno Linux uses (``MAX_ERRNO``).
MAX_ERRNO = 4095


def _named(what, message):
    """``message`` after ``what: `` (no prefix when ``what`` is None: argparse names the option itself)."""
    return message if what is None else f"{what}: {message}"


def check_number(value, what="number", limit=None, context=""):
    """``value`` if it is an int (not a bool) in ``0..limit-1``; else ``TypeError``/``ValueError``.

    For values that arrive as Python objects (the API); ``limit`` None means
    no upper bound; ``context`` is appended to the range message; ``what``
    None leaves the field's name out of the message.

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
        raise ValueError(_named(what, f"{value} is negative"))
    if limit is not None and value >= limit:
        raise ValueError(_named(what, f"{value} is outside 0..{limit - 1}{context}"))
    return value


def parse_number(text, what="number", limit=None, signed=False, context=""):
    """A typed number (see the module doc), or an int passed through, checked against ``limit``.

    ``signed=True`` reads a leading ``-`` and lets the value be negative
    (``limit`` still bounds it above).

    >>> parse_number("1e6")
    Traceback (most recent call last):
    ...
    ValueError: number: '1e6' is not a number (decimal, or hex with 0x; ASCII digits, no sign)
    >>> parse_number("-1", "answer", signed=True), parse_number("-0x10", None, signed=True)
    (-1, -16)
    """
    if isinstance(text, str):
        word = text.strip(" \t")
        if not (_SIGNED if signed else _NUMBER).fullmatch(word):
            form = "ASCII digits" if signed else "ASCII digits, no sign"
            raise ValueError(_named(what, f"{text!r} is not a number (decimal, or hex with 0x; {form})"))
        text = -int(word[1:], 0) if word.startswith("-") else int(word, 0)
    if signed and isinstance(text, int) and not isinstance(text, bool) and text < 0:
        return text
    return check_number(text, what, limit, context)


def parse_errno(text, what="errno"):
    """An errno by name (``ENOMEM``, any case) or number (0 for none), as a positive int.

    The kernel returns ``-errno``; a name Python's ``errno`` module does not
    know, or a number Linux gives no name, is refused.

    >>> parse_errno("ENOMEM"), parse_errno("einval"), parse_errno("12"), parse_errno("0")
    (12, 22, 12, 0)
    >>> parse_errno("EFOO", "fail-prepare")
    Traceback (most recent call last):
    ...
    ValueError: fail-prepare: 'EFOO' is not an errno (a name such as ENOMEM or EINVAL, or its number)
    """
    word = text.strip(" \t") if isinstance(text, str) else text
    if isinstance(word, str) and word[:1].isalpha():
        value = getattr(errno, word.upper(), None)
        if not (isinstance(value, int) and word.upper().startswith("E") and value in errno.errorcode):
            raise ValueError(_named(what, f"{text!r} is not an errno (a name such as ENOMEM or EINVAL, or its number)"))
        return value
    value = parse_number(word, what, MAX_ERRNO + 1)
    if value and value not in errno.errorcode:
        raise ValueError(_named(what, f"{value} is no errno Linux names"))
    return value
