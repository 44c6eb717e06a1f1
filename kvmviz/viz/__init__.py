"""Plots and widgets for kvmviz (matplotlib, ipywidgets); the engine never imports this.

One module per picture: ``figure`` (palette, figure making, PNG/SVG),
``sets`` (``plot_memslots``), ``trees`` (``plot_trees``), ``generations``
(``plot_generations`` and the Stepper's call timeline), ``step``
(``plot_step``), ``objects`` (the Stepper's object picture), ``replay``,
``scaling``; ``widgets`` (the Stepper), ``player_html`` and
``exercise_widgets`` need ipywidgets.

>>> from kvmviz import viz
>>> sorted(n for n in viz.__all__ if n.startswith("plot"))
['plot_generations', 'plot_memslots', 'plot_step', 'plot_trees']
"""

from .figure import OKABE_ITO, png_bytes, show_in_ipython
from .generations import plot_generations
from .sets import plot_memslots
from .step import plot_step
from .trees import plot_trees

show_in_ipython()


def __getattr__(name):
    # ipywidgets is imported only when the Stepper is asked for, so plots work without it.
    if name == "Stepper":
        from .widgets import Stepper
        return Stepper
    if name == "player":
        from .widgets import player
        return player
    raise AttributeError(f"module 'kvmviz.viz' has no attribute {name!r}")


__all__ = ["plot_memslots", "plot_trees", "plot_generations", "plot_step", "Stepper", "player", "png_bytes",
           "OKABE_ITO"]
