"""The two ways plasmd ends with an error that main.py reports (exit code 1)."""

from __future__ import annotations


class StartupError(RuntimeError):
    """The node cannot start as configured (a port taken, a socket in use, ...)."""


class NodeFailedError(RuntimeError):
    """An unexpected error after the node was ready (a bug); its cause is the error."""
