"""The decode pipeline: input order kept, and a decoder process that dies costs its input only."""
from __future__ import annotations

import os

import pytest

from _crash import decode_or_die
from medhash_sdk.exceptions import ImageReadError
from medhash_sdk.pipeline import DecodePools, decode_ahead


@pytest.mark.parametrize("shared_pools", [False, True])
def test_a_dying_decoder_process_fails_its_input_only(shared_pools):
    """A native decoder that aborts on one damaged file breaks the process pool and every input
    in flight: those are decoded again, and only the file that kills its process is an error."""
    items = ["a", "b", "crash-1", "c", "d", "e", "f", "crash-2", "crash-3", "g", "h"]
    if shared_pools:
        with DecodePools(2, "process") as pools:
            out = list(decode_ahead(items, decode_or_die, pool=pools, window=5))
            again = list(decode_ahead(["x", "y"], decode_or_die, pool=pools))   # the pools still work
        assert [d.value for d in again] == ["X", "Y"]
    else:
        out = list(decode_ahead(items, decode_or_die, workers=2, pool="process", window=5))
    assert [d.item for d in out] == items
    for d in out:
        if d.item.startswith("crash"):
            assert isinstance(d.error, ImageReadError) and d.error.source == d.item, d
            assert "decoder process died" in d.reason
        else:
            assert d.ok and d.value == d.item.upper(), d


def test_processes_that_cannot_start_are_one_error_not_one_per_input(monkeypatch):
    """If no decode process can live here at all, that is said once, not blamed on each input."""
    import multiprocessing
    import multiprocessing.spawn

    from medhash_sdk import pipeline
    from medhash_sdk.exceptions import MedhashError

    monkeypatch.setattr(pipeline, "process_context", lambda: multiprocessing.get_context("spawn"))
    false = "/bin/false" if isinstance(multiprocessing.spawn.get_executable(), str) else os.fsencode("/bin/false")
    monkeypatch.setattr(multiprocessing.spawn, "_python_exe", false)   # every worker exits at once
    with pytest.raises(MedhashError, match="die even with nothing to decode"):
        list(decode_ahead(["a", "b", "c"], decode_or_die, workers=2, pool="process"))
