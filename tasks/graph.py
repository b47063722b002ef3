"""Moved to :mod:`imgtool.doit_tasks.graph` (installed with cptra-imgtool); this alias keeps
`import tasks.graph` working inside the checkout."""

import sys

from imgtool.doit_tasks import graph

sys.modules[__name__] = graph
