"""Reading a user's text file (a recipe, a trace) with bounds: size, binary content, encoding.

Not a kernel concept: the CLI's guard against ``/dev/zero``, a binary file or
a 50 MB log passed by mistake. A refusal is a ``ValueError`` naming the file.

>>> import tempfile, os
>>> with tempfile.NamedTemporaryFile("wb", suffix=".recipe", delete=False) as f:
...     _ = f.write(b"\\x00\\x96binary")
>>> read_text(f.name, 1 << 20, "recipe")
Traceback (most recent call last):
...
ValueError: ... is not a text recipe (a NUL byte at offset 0)
>>> os.unlink(f.name)
"""

#: Recipes are short; traces of 100,000 calls take about 15 MB.
RECIPE_LIMIT = 1 << 20
TRACE_LIMIT = 64 << 20


def read_text(path, limit, what):
    """The text of ``path`` (UTF-8), refusing more than ``limit`` bytes or binary content."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit >> 20} MiB: not a {what} this tool reads")
    nul = data.find(b"\0")
    if nul >= 0:
        raise ValueError(f"{path} is not a text {what} (a NUL byte at offset {nul})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a UTF-8 text {what} (byte {e.start} is not UTF-8)") from None
