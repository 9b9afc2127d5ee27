"""Nearest neighbours behind a small protocol, with FAISS as the backend."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class KnnIndex(Protocol):
    def fit(self, x: np.ndarray) -> KnnIndex: ...

    def kneighbors(self, k: int) -> np.ndarray:
        """``(N, min(k, N-1))`` row indices of each fitted point's nearest other points."""
        ...


#: Up to this many points the search is exact; above it, an inverted-file index (IVF).
EXACT_MAX = 200_000
#: IVF probes per query (of ``4·sqrt(N)`` lists): recall@10 against exact search is measured
#: in ``benchmarks/scale.py``.
IVF_PROBES = 16


class FaissKnn:
    """Squared-Euclidean neighbours, excluding each point itself.

    Exact (``faiss.IndexFlatL2``) up to ``exact_max`` points; above it ``faiss.IndexIVFFlat``
    with ``4·sqrt(N)`` lists trained on a sample of at most 64 points per list, ``IVF_PROBES``
    lists probed per query (exact search is quadratic: a million 512-d points would take
    hours on 2 cores). Deterministic given ``seed``.
    """

    def __init__(self, exact_max: int = EXACT_MAX, probes: int = IVF_PROBES, seed: int = 0) -> None:
        self.exact_max, self.probes, self.seed = exact_max, probes, seed

    def fit(self, x: np.ndarray) -> FaissKnn:
        import faiss

        self.x = np.ascontiguousarray(x, dtype=np.float32)
        if self.x.ndim != 2 or len(self.x) == 0:
            raise ValueError(f"expected a non-empty (N, D) array, found shape {self.x.shape}")
        n, d = self.x.shape
        self.index: Any
        if n <= self.exact_max:
            self.index = faiss.IndexFlatL2(d)
        else:
            lists = int(4 * np.sqrt(n))
            quantizer = faiss.IndexFlatL2(d)
            index = faiss.IndexIVFFlat(quantizer, d, lists)
            index.cp.seed = self.seed
            rng = np.random.default_rng(self.seed)
            sample = self.x[np.sort(rng.choice(n, min(n, 64 * lists), replace=False))]
            index.train(sample)
            index.nprobe = self.probes
            self.quantizer = quantizer  # the IVF index keeps a pointer, not a reference
            self.index = index
        self.index.add(self.x)
        return self

    def kneighbors(self, k: int) -> np.ndarray:
        n = len(self.x)
        k = min(k, n - 1)
        if k <= 0:
            return np.zeros((n, 0), dtype=np.int64)
        found = np.empty((n, k + 1), dtype=np.int64)
        for start in range(0, n, 65_536):  # bounded memory for the distance blocks
            _, found[start:start + 65_536] = self.index.search(self.x[start:start + 65_536], k + 1)
        # Exact duplicates can rank before the point itself: drop i wherever it is, keep order.
        valid = (found != np.arange(n)[:, None]) & (found >= 0)
        order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
        out = np.take_along_axis(found, order, axis=1)
        ok = np.take_along_axis(valid, order, axis=1)
        # An IVF probe can come back short: fill with the nearest valid neighbour (else itself).
        first = np.where(ok[:, 0], out[:, 0], np.arange(n))
        out = np.where(ok, out, first[:, None])
        return out
