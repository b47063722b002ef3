# cptra-imgtool build tasks: doit flash cfg=config/<prj>.toml (also manifest, verify, list)
from imgtool.doit_tasks.dodo import *  # noqa: F403
