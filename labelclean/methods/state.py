"""Per-sample class tables: ``(N, C)`` state keyed by dataset row, bounded in memory.

Every method keeps some of these (the training dynamics' mean beliefs, IEG's pseudo-labels,
MLNT's mentor probabilities). At a million rows and a thousand classes one float64 table is
8 GB, so the dtype is chosen here, in one place: float32 up to :data:`FLOAT16_ABOVE` elements,
float16 above (2 GB per table at 10⁹ elements). Updates are computed in float32 and rounded once
on the way into the table; a running mean (rather than a running sum, whose float16 rounding
would grow with the number of visits) keeps that rounding at the scale of the values, about
5e-4 near 1. MSLG's soft-label table is not a mean: it accumulates gradient steps much smaller
than its entries (K = 10), which round-to-nearest would drop; above the budget it is written
with :func:`stochastic_round` instead, which is unbiased, so the steps survive in expectation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

#: Rows x classes above which per-sample mean tables are stored in float16.
FLOAT16_ABOVE = 100_000_000


#: Cells per chunk where an ``(N, C)`` table is combined with another without a dense
#: temporary: 4M cells (16 MB in float32), 4,194 rows at a thousand classes.
CHUNK_CELLS = 1 << 22


def row_chunks(rows: int, width: int) -> Iterator[slice]:
    """Slices covering ``rows`` rows of a table ``width`` columns wide, :data:`CHUNK_CELLS`
    cells (at least one row) each."""
    step = max(1, CHUNK_CELLS // max(1, width))
    for i in range(0, rows, step):
        yield slice(i, i + step)


#: Per-class tables (``Evidence.arrays``, e.g. MSLG's soft labels) with more cells than this are
#: not written to the run folder: at a million rows and a thousand classes one would be a 4 GB
#: file and a second dense copy in memory; the scores keep each row's suspicion and suggestion.
SAVED_TABLE_MAX = FLOAT16_ABOVE


def saved_table(shape: tuple[int, ...] | torch.Size) -> bool:
    """Whether an ``(N, C)`` per-class table of this shape is written to the run folder."""
    return shape[0] * shape[1] <= SAVED_TABLE_MAX


def table_dtype(num_samples: int, num_classes: int) -> torch.dtype:
    """The storage dtype of an ``(N, C)`` per-sample table."""
    return torch.float16 if num_samples * num_classes > FLOAT16_ABOVE else torch.float32


def stochastic_round(x: torch.Tensor, dtype: torch.dtype, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """``x`` rounded to ``dtype`` up or down at random, with ``E[result] = x``.

    Each value goes to the representable neighbour above with probability equal to its distance
    from the one below, over the gap between them (deterministic given ``generator``).
    """
    x = x.float()
    if dtype == torch.float32:
        return x
    near = x.to(dtype)
    below = torch.where(near.float() > x, torch.nextafter(near, near.new_tensor(float("-inf"))), near)
    above = torch.nextafter(below, below.new_tensor(float("inf")))
    gap = (above.float() - below.float()).clamp_min(1e-30)
    up = torch.rand(x.shape, generator=generator) < (x - below.float()) / gap
    return torch.where(up, above, below)


def add_chunked(out: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``out += table`` in place, by chunks (:func:`row_chunks`): adding a float16 table to a
    float32 one in one go makes a float32 copy of it first (4 GB at 10⁹ cells)."""
    for part in row_chunks(*out.shape):
        out[part] += table[part]
    return out


class RowMeans:
    """Running mean of ``(C,)`` vectors per dataset row, and the number of visits.

    ``add(rows, values)`` with distinct ``rows`` (a training batch) updates each row's mean as
    ``m + (v - m) / k``; :meth:`mean` returns float32, with ``fill`` where a row was never
    visited.
    """

    def __init__(self, num_samples: int, num_classes: int, dtype: torch.dtype | None = None) -> None:
        dtype = dtype or table_dtype(num_samples, num_classes)
        self.values = torch.zeros(num_samples, num_classes, dtype=dtype)
        self.count = torch.zeros(num_samples, dtype=torch.float64)

    def add(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        rows = rows.cpu()
        self.count[rows] += 1.0
        k = self.count[rows].float()[:, None]
        old = self.values[rows].float()
        self.values[rows] = (old + (values.detach().float().cpu() - old) / k).to(self.values.dtype)

    def mean(self, fill: torch.Tensor | float | RowMeans | None = None,
             rows: slice | torch.Tensor | None = None) -> torch.Tensor:
        """``(N, C)`` float32 means, or those of ``rows`` only (a slice or row indices); rows
        never visited get ``fill`` (default: uniform; a ``RowMeans``: its means of those rows,
        read without a dense copy)."""
        rows = slice(None) if rows is None else rows
        out = self.values[rows].to(torch.float32, copy=True)  # never a view of the table
        never = self.count[rows] == 0
        if never.any():
            if isinstance(fill, RowMeans):  # gathered for those rows only
                out[never] = fill.mean(rows=torch.arange(len(self.count))[rows][never])
            elif isinstance(fill, torch.Tensor):
                out[never] = fill[rows][never]
            else:
                out[never] = (1.0 / out.shape[1]) if fill is None else fill
        return out

    def add_mean_to(self, out: torch.Tensor) -> torch.Tensor:
        """``out += mean()`` in place, by chunks (:func:`row_chunks`; no dense float32 copy)."""
        for part in row_chunks(*out.shape):
            out[part] += self.mean(rows=part)
        return out

    def gather(self, cols: torch.Tensor) -> torch.Tensor:
        """``(N,)`` float32: each row's mean at column ``cols[i]`` (``1/C`` where never visited),
        without a dense float32 copy of the table."""
        out = self.values.gather(1, cols.view(-1, 1).long()).float()[:, 0]
        out[self.count == 0] = 1.0 / self.values.shape[1]
        return out

    def merge(self, other: RowMeans) -> None:
        """Fold in the means another process kept for the same rows over other visits
        (a multi-GPU run's gather): the visit-weighted mean of the two, exact up to rounding."""
        total = self.count + other.count
        w = (other.count / total.clamp_min(1)).float()[:, None]
        mine = self.values.float()
        self.values.copy_((mine + (other.values.float() - mine) * w).to(self.values.dtype))
        self.count.copy_(total)

    @property
    def nbytes(self) -> int:
        return self.values.element_size() * self.values.nelement() + 8 * self.count.nelement()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"values": self.values.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.values.copy_(state["values"])
        self.count.copy_(state["count"])
