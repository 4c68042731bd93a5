"""Grouping work that arrives on a queue: the writer commits, the encoder runs the model and the
scanner reads the codes once for everything that is waiting, so concurrent requests share the
cost. `None` on the queue is the close signal."""
from __future__ import annotations

import queue
import time
from typing import Any, Callable


def take_group(q: queue.Queue, limit: int, *, wait_s: float = 0.0,
               coming: Callable[[], bool] | None = None) -> tuple[list[Any], bool]:
    """Block for one item, then take up to `limit` in all of those already waiting; with
    `coming`, also wait up to wait_s for more while coming() says items are on their way.

    Returns (items, closed): closed is True once the close signal was taken; the items taken
    before it are still returned, to be handled before the worker stops."""
    first = q.get()
    if first is None:
        return [], True
    items = [first]
    deadline = time.perf_counter() + wait_s
    while len(items) < limit:
        try:
            nxt = q.get_nowait()
        except queue.Empty:
            left = deadline - time.perf_counter()
            if coming is None or left <= 0 or not coming():
                break
            try:
                nxt = q.get(timeout=left)
            except queue.Empty:
                break
        if nxt is None:
            return items, True
        items.append(nxt)
    return items, False
