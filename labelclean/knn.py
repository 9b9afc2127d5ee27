"""Nearest neighbours behind a small protocol, with FAISS as the backend."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class KnnIndex(Protocol):
    def fit(self, x: np.ndarray) -> KnnIndex: ...

    def kneighbors(self, k: int) -> np.ndarray:
        """``(N, min(k, N-1))`` row indices of each fitted point's nearest other points."""
        ...


#: Exact search costs N²·D multiply-adds; up to this many it is exact, above it an
#: inverted-file index (IVF). 2·10¹¹ is about 20,000 points of 512 dimensions (6 s on 2 CPU
#: cores) or 40,000 of 128; exact search over 100,000 512-d points took 160 s there.
EXACT_BUDGET = 2e11
#: Never exact above this many points, whatever the dimension.
EXACT_MAX = 200_000
#: IVF probes per query (of ``4·sqrt(N)`` lists): recall@10 against exact search is measured
#: in ``benchmarks/scale.py``.
IVF_PROBES = 16
#: k-means iterations that place the IVF lists (FAISS's default is 25; the lists only need
#: to be roughly placed, the probes absorb the rest: 10 iterations cost 2.5x less at a million
#: 512-d points).
IVF_KMEANS_ITERATIONS = 10
#: Above the exact budget, vectors wider than this are projected onto their first principal
#: components before the IVF index (FAISS ``PCAMatrix``): search cost is linear in the width,
#: and a million 512-d points took minutes per stage at full width on 2 cores.
IVF_DIM = 64
_CHUNK = 65_536


class FaissKnn:
    """Squared-Euclidean neighbours, excluding each point itself.

    Exact (``faiss.IndexFlatL2``) while ``N²·D <= EXACT_BUDGET`` and ``N <= exact_max``;
    above it the vectors are projected onto their first ``IVF_DIM`` principal components
    (when wider) and searched in a ``faiss.IndexIVFFlat`` with ``4·sqrt(N)`` lists trained on a
    sample of at most 64 points per list, ``IVF_PROBES`` lists probed per query (exact search
    is quadratic: a million 512-d points would take hours on 2 cores). The recall@10 of both
    approximations against exact search is measured in ``benchmarks/scale.py``.
    Deterministic given ``seed``.
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
        if n <= self.exact_max and float(n) * n * d <= EXACT_BUDGET:
            self.index = faiss.IndexFlatL2(d)
        else:
            lists = int(4 * np.sqrt(n))
            rng = np.random.default_rng(self.seed)
            sample = np.sort(rng.choice(n, min(n, 64 * lists), replace=False))
            if d > IVF_DIM:
                pca = faiss.PCAMatrix(d, IVF_DIM)
                pca.train(self.x[sample])
                self.x = np.concatenate([pca.apply(self.x[i:i + _CHUNK]) for i in range(0, n, _CHUNK)])
                d = IVF_DIM
            quantizer = faiss.IndexFlatL2(d)
            index = faiss.IndexIVFFlat(quantizer, d, lists)
            index.cp.seed = self.seed
            index.cp.niter = IVF_KMEANS_ITERATIONS
            index.train(self.x[sample])
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
        for start in range(0, n, _CHUNK):  # bounded memory for the distance blocks
            _, found[start:start + _CHUNK] = self.index.search(self.x[start:start + _CHUNK], k + 1)
        # Exact duplicates can rank before the point itself: drop i wherever it is, keep order.
        valid = (found != np.arange(n)[:, None]) & (found >= 0)
        order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
        out = np.take_along_axis(found, order, axis=1)
        ok = np.take_along_axis(valid, order, axis=1)
        # An IVF probe can come back short: fill with the nearest valid neighbour (else itself).
        first = np.where(ok[:, 0], out[:, 0], np.arange(n))
        out = np.where(ok, out, first[:, None])
        return out
