"""Index against a plain Python model of it, over random sequences of operations (hypothesis).

The model is a list of (id, code) in row order: add() appends, remove() deletes keeping the
order, sort_by_code() sorts stably by the code's bytes. After every step a search (with and
without the multi-index tables, with a random allow list) must equal brute_force_search over
the model's rows: the same ids in the same order, ties included; ids, codes and a save/load
round trip must equal the model's.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from medhash_sdk import Index
from medhash_sdk import _hamming as H
from medhash_sdk.codes import brute_force_search

NBYTES = 2  # 16-bit codes: few values, so ties and equal codes are everywhere


class IndexModel(RuleBasedStateMachine):
    @initialize(tables=st.booleans())
    def start(self, tables: bool) -> None:
        self.index = Index(NBYTES * 8)
        self.rows: list[tuple[int, bytes]] = []  # (id, code) in row order
        self.next_id = 0
        if tables:
            self.index.build_multi_index(2)

    def _codes(self) -> np.ndarray:
        return np.frombuffer(b"".join(c for _, c in self.rows), dtype=np.uint8).reshape(-1, NBYTES)

    @rule(values=st.lists(st.integers(0, 63), min_size=1, max_size=40))
    def add(self, values: list[int]) -> None:
        # codes from a small set of values: many exact duplicates
        codes = np.array([[v * 37 % 256, v % 5] for v in values], dtype=np.uint8)
        ids = list(range(self.next_id, self.next_id + len(values)))
        self.next_id += len(values)
        self.index.add(codes, ids=ids)
        self.rows += [(i, c.tobytes()) for i, c in zip(ids, codes)]

    @precondition(lambda self: self.rows)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        present = [i for i, _ in self.rows]
        gone = data.draw(st.lists(st.sampled_from(present), min_size=1, max_size=12))
        assert self.index.remove(gone) == len(set(gone))
        self.rows = [r for r in self.rows if r[0] not in set(gone)]

    @rule()
    def sort_by_code(self) -> None:
        self.index.sort_by_code()
        self.rows.sort(key=lambda r: r[1])  # stable: equal codes keep their order

    @rule(copy=st.booleans())
    def build_tables(self, copy: bool) -> None:
        self.index.build_multi_index(2, copy_codes=copy)

    @precondition(lambda self: self.rows)
    @rule()
    def save_and_load(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            self.index.save(os.path.join(d, "i.mhi"))
            back = Index.load(os.path.join(d, "i.mhi"))
        assert back.ids.tolist() == [i for i, _ in self.rows]
        np.testing.assert_array_equal(back.codes, self._codes())

    @rule(k=st.integers(1, 60), query=st.integers(0, 63), data=st.data())
    def search(self, k: int, query: int, data: st.DataObject) -> None:
        q = np.array([[query * 37 % 256, query % 5]], dtype=np.uint8)
        ids = [i for i, _ in self.rows]
        allow = data.draw(st.none() | st.lists(st.sampled_from(ids), max_size=20) if ids else st.none())
        mask = None if allow is None else np.isin(ids, allow)
        want_rows, want_d = brute_force_search(q, self._codes(), k, allow=mask)
        want_ids = [ids[r] if r >= 0 else -1 for r in want_rows[0]]
        for patience in (1e6, 0.0):  # answered from the tables, and by the scan
            before = H.set_multi_index_patience(patience)
            try:
                got = self.index.search(q[0], k=k, allow=allow)
            finally:
                H.set_multi_index_patience(before)
            assert got.ids.tolist() == want_ids
            assert got.distances.tolist() == want_d[0].tolist()

    @invariant()
    def same_rows(self) -> None:
        assert self.index.ids.tolist() == [i for i, _ in self.rows]
        np.testing.assert_array_equal(self.index.codes, self._codes())


IndexModel.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
TestIndexModel = IndexModel.TestCase
