"""Validation helpers shared by every layer: the error type of a bad setting and the one-line check.

Every error names the offending key (``run.rounds``, ``algo.floral.rank``) and what was expected, so
the command line can print it as one line. This module imports nothing from bouquet: any layer may
use it, which is what keeps option classes (algorithms) and their parser (app) free of cycles.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A setting is unknown, ill-typed or out of range; the message starts with the key."""


def require(ok: bool, key: str, expected: str, got: Any) -> None:
    """Raise ``ConfigError("key: expected ..., got ...")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {got!r}")


def require_choice(value: Any, choices: tuple, key: str) -> None:
    """``value`` must be one of ``choices``."""
    require(value in choices, key, f"one of {list(choices)}", value)


def require_rank(value: float, key: str) -> None:
    """An adaptor rank setting: a budget rho in (0, 1) or an integer rank >= 1."""
    require(value > 0 and (value < 1 or float(value).is_integer()), key,
            "a budget in (0, 1) or an integer rank >= 1", value)
