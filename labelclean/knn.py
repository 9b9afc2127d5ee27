"""Nearest neighbours behind a small protocol, with FAISS as the backend."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class KnnIndex(Protocol):
    def fit(self, x: np.ndarray) -> KnnIndex: ...

    def kneighbors(self, k: int) -> np.ndarray:
        """``(N, min(k, N-1))`` row indices of each fitted point's nearest other points."""
        ...


class FaissKnn:
    """Exact squared-Euclidean neighbours (``faiss.IndexFlatL2``), excluding each point itself."""

    def fit(self, x: np.ndarray) -> FaissKnn:
        import faiss

        self.x = np.ascontiguousarray(x, dtype=np.float32)
        if self.x.ndim != 2 or len(self.x) == 0:
            raise ValueError(f"expected a non-empty (N, D) array, found shape {self.x.shape}")
        self.index = faiss.IndexFlatL2(self.x.shape[1])
        self.index.add(self.x)
        return self

    def kneighbors(self, k: int) -> np.ndarray:
        n = len(self.x)
        k = min(k, n - 1)
        if k <= 0:
            return np.zeros((n, 0), dtype=np.int64)
        _, found = self.index.search(self.x, k + 1)
        out = np.empty((n, k), dtype=np.int64)
        for i, row in enumerate(found):
            # Exact duplicates can rank before the point itself: drop i wherever it is.
            others = row[(row != i) & (row >= 0)]
            out[i] = others[:k]
        return out
