"""What every kvmviz figure shares: the palette, figure making, PNG/SVG bytes, titles.

Figures are built without pyplot (no global state, no figure leaks) at
``DPI`` 72, so one point is one CSS pixel at the size a figure is shown:
text of ``MIN_FONT`` points is ``MIN_FONT`` px on screen. Colours are the
Okabe-Ito palette (colour-blind safe); the same state always gives the same
pixels. Every figure title starts with the version the VM models
(``export.model_label``: "Linux 6.12 model").

>>> fig = new_figure(2, 1); len(png_bytes(fig)) > 100, to_svg(fig).startswith("<svg")
(True, True)
"""

import io
import re
import sys
import textwrap

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection, PathCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from PIL import Image

from ..export import model_label

#: The Okabe-Ito colour-blind-safe palette.
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73",
             "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7"}
C = OKABE_ITO
SAME, DIFFERS, INVALID, EMPTY = C["sky"], C["orange"], C["vermillion"], "white"
SET_COLOURS = (C["blue"], C["orange"])
LOCK_COLOURS = {"slots_lock": C["blue"], "slots_arch_lock": C["green"], "mn_invalidate_lock": C["vermillion"]}
DPI = 72
#: The smallest text on screen, in px (= points at ``DPI``).
MIN_FONT = 10
#: Width of the Stepper's picture pane, in px.
PANE_PX = 560
_SVG_RC = {"svg.fonttype": "none", "svg.hashsalt": "kvmviz", "font.size": MIN_FONT}
LABEL_BOX = {"facecolor": "white", "alpha": 0.85, "pad": 1, "linewidth": 0}   # text on hatching


#: Pixels per CSS pixel of the PNGs notebooks show: sharp on HiDPI screens, shown at ``DPI`` size.
PNG_SCALE = 2


class KvmFigure(Figure):
    """A ``Figure`` that shows itself in Jupyter as a PNG at twice its size, displayed at its size.

    The PNG carries its display width and height as metadata (notebooks and
    ``nbconvert`` honour it), so text of ``MIN_FONT`` points is ``MIN_FONT`` CSS
    px, drawn with twice the pixels: crisp on HiDPI screens, never stretched.

    >>> data, size = KvmFigure(figsize=(1, 0.5))._repr_png_(); data[:4], size
    (b'\\x89PNG', {'width': 72, 'height': 36})
    """

    def _repr_png_(self):
        width, height = (round(v) for v in self.get_size_inches() * DPI)
        return png_bytes(self, PNG_SCALE), {"width": width, "height": height}


def show_in_ipython(shell=None):
    """Make IPython show a ``KvmFigure`` with its own ``_repr_png_``; True if a shell was found.

    ``%matplotlib inline`` registers a PNG printer for every ``Figure``
    (cropped, at the figure's dpi, no size metadata); a printer registered
    for this subclass comes first. Called when ``kvmviz.viz`` is imported
    inside IPython.

    >>> from IPython.core.interactiveshell import InteractiveShell
    >>> show_in_ipython(InteractiveShell.instance())
    True
    >>> fmt = InteractiveShell.instance().display_formatter.formatters["image/png"]
    >>> fmt.lookup(new_figure(1, 1)).__name__
    '_repr_png_'
    """
    if shell is None:
        ipython = sys.modules.get("IPython")
        shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return False
    shell.display_formatter.formatters["image/png"].for_type(KvmFigure, KvmFigure._repr_png_)
    return True


def new_figure(width, height):
    """A ``KvmFigure`` of ``width`` x ``height`` inches at ``DPI`` (72: one point per pixel), on an Agg canvas.

    >>> new_figure(2, 1).bbox.size.tolist()
    [144.0, 72.0]
    """
    # fixed margins instead of a layout engine: constrained layout doubled the drawing time
    fig = KvmFigure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig, scale=1):
    """Render ``fig`` to PNG bytes at ``scale`` pixels per CSS pixel, with no metadata (same figure, same bytes).

    Draws the Agg canvas and encodes its buffer directly: a third faster
    than ``savefig``, which matters for redraws.

    >>> png_bytes(new_figure(1, 1))[:4]
    b'\\x89PNG'
    >>> Image.open(io.BytesIO(png_bytes(new_figure(1, 0.5), 2))).size
    (144, 72)
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    dpi = fig.dpi
    fig.dpi = DPI * scale
    try:
        canvas.draw()
        image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    finally:
        fig.dpi = dpi
    buf = io.BytesIO()
    image.save(buf, format="png", compress_level=1)
    return buf.getvalue()


def clear_artists(fig):
    """Remove the data artists and legends of ``fig``, keeping axes and ticks.

    Redrawing into a cleared figure skips building axes and tick objects,
    which is most of the cost of a small figure (the Stepper redraws per step).

    >>> fig = new_figure(2, 2); ax = fig.subplots(); _ = ax.plot([1, 2]); clear_artists(fig); ax.lines
    <Axes.ArtistList of 0 lines>
    """
    for ax in fig.axes:
        for artist in (*ax.lines, *ax.patches, *ax.collections, *ax.texts, *ax.images):
            artist.remove()
        if ax.legend_ is not None:
            ax.legend_.remove()
    for legend in list(fig.legends):
        legend.remove()


#: Average width of a character of a 10-point title at ``DPI``, in pixels (DejaVu Sans, measured).
_TITLE_CHAR_PX = 5.3


def titled(vm, text, pixels=576):
    """A title ``pixels`` wide: the modelled version, then ``text``.

    The version comes first, with the variant and address spaces when they
    are not the usual ones (``export.model_label``); when that does not fit
    on one line they shrink to ``Linux 6.12 seed, 1 AS``, and only a title
    that still does not fit is wrapped (the layouts leave room for one line).

    >>> import kvmviz
    >>> titled(kvmviz.VM(kernel="6.12"), "as0 at rest")
    'Linux 6.12 model, as0 at rest'
    >>> titled(kvmviz.VM(kernel="6.12", variant="no-catch-up", address_spaces=1), "as0 at rest: " + "x" * 60)
    'Linux 6.12 no-catch-up, 1 AS: as0 at rest: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'
    """
    width = int(pixels / _TITLE_CHAR_PX)
    full = f"{model_label(vm)}, {text}"
    if len(full) <= width:
        return full
    extra = (f" {vm.variant}" if vm.variant != "merged" else "") + (
        f", {vm.address_spaces} AS" if "address space" in model_label(vm) else "")
    return textwrap.fill(f"Linux {vm.kernel}{extra}: {text}", width, break_on_hyphens=False)


def axes_px(fig, left, top, width, height):
    """Axes at a place given in px from the figure's top-left corner (layouts in px, text in px).

    >>> fig = new_figure(2, 1); [round(float(v), 3) for v in axes_px(fig, 36, 18, 72, 36).get_position().bounds]
    [0.25, 0.25, 0.5, 0.5]
    """
    w, h = fig.bbox.width, fig.bbox.height
    return fig.add_axes((left / w, 1 - (top + height) / h, width / w, height / h))


def spaced(positions, px_per_unit, min_px):
    """Indexes of ``positions`` (ascending) kept so that kept ones are at least ``min_px`` apart.

    For ticks and labels that must not overlap at ``MIN_FONT``.

    >>> spaced([0, 1, 2, 10, 11, 30], px_per_unit=2, min_px=10)
    [0, 3, 5]
    """
    keep, last = [], None
    for i, pos in enumerate(positions):
        if last is None or (pos - last) * px_per_unit >= min_px:
            keep.append(i)
            last = pos
    return keep


def width_px(fig, ax=None):
    """Width of ``fig`` (or of its axes ``ax``) in pixels, for ``titled``."""
    return fig.get_figwidth() * fig.dpi * (ax.get_position().width if ax is not None else 1)


def to_svg(fig):
    """``fig`` as an inline ``<svg>`` element sized in px (no XML prologue, no date).

    Matplotlib writes SVG at 72 units per inch in ``pt``; here the same
    numbers become ``px``, so a 10-point font is 10 px on screen.

    >>> to_svg(new_figure(1, 0.5))[:40]
    '<svg xmlns:xlink="http://www.w3.org/1999'
    """
    buf = io.StringIO()
    with matplotlib.rc_context(_SVG_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r'(width|height)="([\d.]+)pt"', r'\1="\2px"', text, count=2)
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)


class Bands:
    """Piecewise-linear axis: each slot and each gap between boundaries gets a band.

    Tiny slots stay readable next to huge ones; ticks keep the real values.

    >>> b = Bands([0, 0x100, 0x100000]); b(0x80), b(0x100000)
    (0.5, 2.0)
    """

    def __init__(self, boundaries):
        self.edges = sorted(set(boundaries))
        self.pos = np.arange(len(self.edges), dtype=float)

    def __call__(self, value):
        return float(np.interp(value, self.edges, self.pos))


def frame_axes(ax, active):
    """Frame ``ax`` thick green if it shows the active set, thin grey otherwise."""
    for spine in ax.spines.values():
        spine.set_edgecolor(C["green"] if active else "0.6")
        spine.set_linewidth(3 if active else 1)


def boxes(ax, rects, facecolors, linewidths=0.8, edgecolor="black", hatch=None):
    """Draw (x, y, w, h) boxes as one collection (far faster than one patch each)."""
    if rects:
        ax.add_collection(PatchCollection([Rectangle((x, y), w, h) for x, y, w, h in rects],
                                          facecolors=facecolors, edgecolors=edgecolor,
                                          linewidths=linewidths, hatch=hatch))


def legibility(fig, scale=1.0):
    """The smallest text of ``fig`` in CSS px when shown ``scale`` times its size, and what breaks the rules.

    The rules: no text below ``MIN_FONT`` px, no text (tick labels included)
    outside the figure, no legend over data (lines, bars, patches, images,
    markers) of any axes. Only tick labels the axes draw are checked.

    >>> fig = new_figure(3, 2); ax = fig.add_axes((0.2, 0.2, 0.7, 0.7)); _ = ax.plot([0, 1], [0, 1], label="y")
    >>> _ = ax.legend(loc="center", fontsize=8); low, problems = legibility(fig)
    >>> low, problems
    (8.0, ["text of 8.0 px: 'y'", "legend over the data of axes 0 ('y')"])
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    low, problems = float("inf"), []
    for text in _drawn_texts(fig):
        px = text.get_fontsize() * fig.dpi / 72 * scale
        low = min(low, px)
        if px < MIN_FONT - 1e-6:
            problems.append(f"text of {px:.1f} px: {text.get_text()[:50]!r}")
        box = text.get_window_extent(renderer)
        if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
            problems.append(f"text outside the figure: {text.get_text()[:50]!r}")
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for i, ax in enumerate(fig.axes):
            if _covers_data(ax, box, renderer):
                problems.append(f"legend over the data of axes {i} ({legend.get_texts()[0].get_text()!r})")
    return low, problems


def _drawn_texts(fig):
    """Visible, non-empty texts of ``fig``: tick labels only where the axes draws ticks."""
    ticks = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            slack = (hi - lo) * 1e-9
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                ticks.update((tick.label1, tick.label2))
                if lo - slack <= tick.get_loc() <= hi + slack:
                    for label in (tick.label1, tick.label2):
                        if label.get_visible() and label.get_text().strip():
                            yield label
    for text in fig.findobj(Text):
        if (text not in ticks and text.get_visible() and text.get_text().strip()
                and (text.axes is None or text.axes.get_visible())):
            yield text


def _covers_data(ax, box, renderer):
    """True when the display box ``box`` overlaps a data artist of ``ax``."""
    for line in ax.lines:
        if not line.get_visible() or not len(line.get_xydata()):
            continue
        pts = line.get_transform().transform(line.get_xydata())
        if np.any((pts[:, 0] > box.x0) & (pts[:, 0] < box.x1) & (pts[:, 1] > box.y0) & (pts[:, 1] < box.y1)):
            return True
        if len(pts) > 1 and any(_segment_hits(a, b, box) for a, b in zip(pts, pts[1:])):
            return True
    for coll in ax.collections:
        if isinstance(coll, PathCollection):          # markers: their positions
            pts = coll.get_offset_transform().transform(coll.get_offsets())
            if np.any((pts[:, 0] > box.x0) & (pts[:, 0] < box.x1) & (pts[:, 1] > box.y0) & (pts[:, 1] < box.y1)):
                return True
            continue
        for path in coll.get_paths():
            if path.get_extents(coll.get_transform()).overlaps(box):
                return True
    return any(a.get_visible() and a.get_window_extent(renderer).overlaps(box) for a in (*ax.patches, *ax.images))


def _segment_hits(a, b, box):
    """True when the segment from ``a`` to ``b`` (display coordinates) crosses ``box``."""
    ts = np.linspace(0, 1, 32)[:, None]
    pts = a + (b - a) * ts
    return bool(np.any((pts[:, 0] > box.x0) & (pts[:, 0] < box.x1) & (pts[:, 1] > box.y0) & (pts[:, 1] < box.y1)))
