"""Moved to :mod:`imgtool.doit_tasks.checker` (installed with cptra-imgtool); this alias keeps
`import tasks.checker` working inside the checkout."""

import sys

from imgtool.doit_tasks import checker

sys.modules[__name__] = checker
