"""argparse types shared by every `medhash` command (and the plugins'), built on the API's own
checks (medhash_sdk.validation): a bad value is an argparse error, so the command prints one
line naming the option and exits with status 2, as for any other bad argument."""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable

from ..validation import check_fractions, check_int


def _as_argparse(check: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return check(text)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = check.__name__
    return parse


def _int(text: str, minimum: int) -> int:
    try:
        return check_int("value", int(text), minimum=minimum)
    except ValueError:
        raise ValueError(f"expected an integer >= {minimum}, got {text!r}") from None


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum."""
    parse = _as_argparse(lambda text: _int(text, minimum))
    parse.__name__ = f"integer >= {minimum}"
    return parse


def _int_between(text: str, low: int, high: int) -> int:
    value = _int(text, low)
    if value > high:
        raise ValueError(f"expected an integer from {low} to {high}, got {text!r}")
    return value


#: An integer >= 1 (batch sizes, k, workers, shard sizes).
positive_int = int_at_least(1)
positive_int.__name__ = "positive integer"

#: An integer >= 0.
non_negative_int = int_at_least(0)
non_negative_int.__name__ = "non-negative integer"

def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"expected a finite number > 0, got {text!r}")
    return value


#: A finite number > 0 (sizes in MiB, intervals in seconds).
positive_number = _as_argparse(_positive_number)
positive_number.__name__ = "positive number"

#: A TCP port, 0-65535 (0: any free port).
port = _as_argparse(lambda text: _int_between(text, 0, 65535))
port.__name__ = "port"

#: Three fractions like 0.7,0.1,0.2 (train, val, test), summing to 1.
fractions = _as_argparse(lambda text: check_fractions("the fractions", text.split(",")))
fractions.__name__ = "fractions"


def providers(text: str) -> str | list[str]:
    """'auto', 'cpu', 'cuda', 'tensorrt', or a comma-separated list of ONNX Runtime provider names."""
    return [p.strip() for p in text.split(",") if p.strip()] if "," in text else text.strip()


def ray_address(text: str) -> str:
    """--ray's optional ADDRESS; a path here means the user wrote `--ray INPUT`."""
    if text and os.path.exists(text):
        raise argparse.ArgumentTypeError(
            f"took {text!r} as the cluster address, but it is a path: write --ray=ADDRESS or put --ray "
            "after the INPUTs")
    return text
