"""Grouping work that arrives on a queue: the writer commits, the encoder runs the model and the
scanner reads the codes once for everything that is waiting, so concurrent requests share the
cost. `None` on the queue is the close signal."""
from __future__ import annotations

import queue
from typing import Any


def take_group(q: queue.Queue, limit: int) -> tuple[list[Any], bool]:
    """Block for one item, then take up to `limit` in all of those already waiting.

    Returns (items, closed): closed is True once the close signal was taken; the items taken
    before it are still returned, to be handled before the worker stops."""
    first = q.get()
    if first is None:
        return [], True
    items = [first]
    while len(items) < limit:
        try:
            nxt = q.get_nowait()
        except queue.Empty:
            break
        if nxt is None:
            return items, True
        items.append(nxt)
    return items, False
