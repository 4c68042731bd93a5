"""Argument checks shared by the API and the CLI: a bad argument raises TypeError or ValueError
with a message that says how to fix it (the CLI turns both into one line and exit status 2;
its argparse types in medhash_sdk.commands.arguments call these same checks)."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np


def check_int(name: str, value: Any, *, minimum: int = 1, hint: str = "") -> int:
    """`value` as an int >= minimum; TypeError for a non-integer (bool included), ValueError below."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}{hint}, got {value}")
    return int(value)


def check_optional_int(name: str, value: Any, *, minimum: int = 1, hint: str = "") -> int | None:
    """None, or check_int(...)."""
    return None if value is None else check_int(name, value, minimum=minimum, hint=hint)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """`value` if it is one of `choices`; ValueError naming them otherwise."""
    options = tuple(choices)
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return str(value)


def check_fractions(name: str, value: Any, count: int = 3) -> tuple[float, ...]:
    """`count` non-negative numbers summing to 1 (e.g. train, val, test fractions)."""
    try:
        f = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {count} numbers like 0.7,0.1,0.2, got {value!r}") from None
    if len(f) != count or min(f) < 0 or abs(sum(f) - 1) > 1e-6:
        raise ValueError(f"{name} must be {count} non-negative fractions summing to 1, got {value!r}")
    return f
