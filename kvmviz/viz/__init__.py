"""Plots and widgets for kvmviz (matplotlib, ipywidgets); the engine never imports this.

>>> from kvmviz import viz
>>> sorted(n for n in viz.__all__ if n.startswith("plot"))
['plot_generations', 'plot_memslots', 'plot_step', 'plot_trees']
"""

from .plots import OKABE_ITO, plot_generations, plot_memslots, plot_step, plot_trees, png_bytes


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
