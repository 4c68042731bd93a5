"""A decoder that dies like a native one crashing on a damaged file (for the pool tests)."""
from __future__ import annotations

import os


def decode_or_die(item: str) -> str:
    """Return the item upper-cased; an item starting with "crash" kills its process."""
    if item.startswith("crash"):
        os.abort()   # what an uncaught C++ exception in a codec does
    return item.upper()
