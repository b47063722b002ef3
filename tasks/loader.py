"""Moved to :mod:`imgtool.doit_tasks.loader` (installed with cptra-imgtool); this alias keeps
`import tasks.loader` working inside the checkout."""

import sys

from imgtool.doit_tasks import loader

sys.modules[__name__] = loader
