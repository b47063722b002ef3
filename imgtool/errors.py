"""Typed errors. Every message is one user-facing line; only the CLI prints them."""

from __future__ import annotations


class ImgtoolError(Exception):
    """Base class: ``str(err)`` is a one-line message fit for the user."""

    exit_code = 2


class ConfigError(ImgtoolError):
    """A project config is malformed or names something that is not there."""


class KeyFileError(ImgtoolError):
    """A key file cannot be read or is not the kind of key expected."""


class SigningError(ImgtoolError):
    """A signature could not be produced or did not verify."""


class LmsStateError(SigningError):
    """The LMS leaf state refuses to hand out a leaf (exhausted, locked, corrupt)."""


class FormatError(ImgtoolError):
    """A binary file (manifest, flash image, bundle) cannot be parsed."""


class OutputError(ImgtoolError):
    """An output path cannot be written (a directory, an input, the same file twice)."""


class ServerError(ImgtoolError):
    """The signing server or a client of it failed."""
