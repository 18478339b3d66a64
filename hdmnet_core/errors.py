"""The base class of expected failures that are not configuration or data errors.

The CLI prints any :class:`UserError` as one ``error:`` line and exits with code 2 (like
``ConfigError`` and ``DataError``). This module imports nothing heavy, so the CLI can
name the class without importing torch.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can act on; its message names the file or value and what to do."""
