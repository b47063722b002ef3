"""Moved to :mod:`imgtool.doit_tasks.graph2` (installed with cptra-imgtool); this alias keeps
`import tasks.graph2` working inside the checkout."""

import sys

from imgtool.doit_tasks import graph2

sys.modules[__name__] = graph2
