"""The one exception type for user mistakes.

Library code raises `ScratchlmError` (or a subclass) with a single line that names the problem and the fix; the
CLI prints that line and exits with status 2. Internal invariants use `assert` instead.
"""

from __future__ import annotations


class ScratchlmError(Exception):
    """A user-facing error: one line, names the problem and how to fix it."""


class ConfigError(ScratchlmError):
    """An invalid configuration value (raised from dataclass `__post_init__`).

    Deliberately not a `ValueError`: tyro catches ValueErrors raised while it builds a dataclass and draws its own
    multi-line box; a ConfigError passes through to the CLI's one-line handler instead.
    """
