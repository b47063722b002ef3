"""The optional compiled part of cptra-imgtool; everything else is in pyproject.toml.

imgtool/keys/_lmsfast.c (LMS tree computation) is built by `pip install` (also `-e`) when a C
compiler
and the Python headers exist. ``optional=True``: when the build fails the install still succeeds
and imgtool.keys.lms_tree computes the same values in pure Python. (setup.py rather than
pyproject.toml's ``[tool.setuptools.ext-modules]``, which setuptools still calls experimental and
announces with a banner on every install.)
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("imgtool.keys._lmsfast", ["imgtool/keys/_lmsfast.c"], optional=True)])
