"""The doit task creators live in :mod:`imgtool.doit_tasks` (installed with cptra-imgtool, so that
a firmware tree's own ``tasks`` package is never shadowed or shadowing). This folder is a thin
alias kept for scripts that did ``from tasks import graph`` inside the checkout; it is not
installed."""

from imgtool.doit_tasks import checker, graph, graph2, loader

__all__ = ["checker", "graph", "graph2", "loader"]
