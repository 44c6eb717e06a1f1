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
import textwrap

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
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


class KvmFigure(Figure):
    """A ``Figure`` that shows itself as a PNG in Jupyter, with or without pyplot.

    >>> KvmFigure(figsize=(1, 1))._repr_png_()[:4]
    b'\\x89PNG'
    """

    def _repr_png_(self):
        return png_bytes(self)


def new_figure(width, height):
    """A ``KvmFigure`` of ``width`` x ``height`` inches at ``DPI`` (72: one point per pixel), on an Agg canvas.

    >>> new_figure(2, 1).bbox.size.tolist()
    [144.0, 72.0]
    """
    # fixed margins instead of a layout engine: constrained layout doubled the drawing time
    fig = KvmFigure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig):
    """Render ``fig`` to PNG bytes, with no metadata (same figure, same bytes).

    Draws the Agg canvas and encodes its buffer directly: a third faster
    than ``savefig``, which matters for the Stepper's per-step redraw.

    >>> png_bytes(new_figure(1, 1))[:4]
    b'\\x89PNG'
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
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
