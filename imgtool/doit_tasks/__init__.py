"""doit task creators of cptra-imgtool (installed with the package).

A firmware tree needs only a two-line ``dodo.py`` (``cptra-imgtool new-project`` writes it)::

    # cptra-imgtool build tasks: doit flash cfg=config/<prj>.toml (also manifest, verify, list)
    from imgtool.doit_tasks.dodo import *  # noqa: F403

The import path is ``imgtool.doit_tasks``, never a top-level ``tasks`` package, so a firmware tree
with its own ``tasks.py`` or ``tasks/`` (invoke users) keeps it. ``cptra-imgtool build`` runs the
same graph without any ``dodo.py``.
"""

from __future__ import annotations

DODO_PY = (
    "# cptra-imgtool build tasks: doit flash cfg=config/<prj>.toml (also manifest, verify, list)\n"
    "from imgtool.doit_tasks.dodo import *  # noqa: F403\n"
)
