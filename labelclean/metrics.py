"""Detection metrics against known mislabels. Higher scores mean "more likely wrong"."""

from __future__ import annotations

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); NaN if a class is absent."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(scores)
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision of the ranking by descending ``scores``; NaN without positives.

    ``Σ_k (R_k − R_{k−1}) P_k`` over the distinct score thresholds, as scikit-learn computes
    it: tied samples enter the ranking together, so the order of rows within a tie never
    changes the result.
    """
    positive = np.asarray(positive, dtype=bool)
    if positive.sum() == 0:
        return float("nan")
    values = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-values, kind="stable")
    ranked, hits = values[order], positive[order]
    tp = np.cumsum(hits)
    last = np.r_[ranked[1:] != ranked[:-1], True]  # the end of each group of tied scores
    tp_at, seen_at = tp[last], np.flatnonzero(last) + 1
    gain = np.diff(np.r_[0, tp_at]) / positive.sum()
    return float((tp_at / seen_at * gain).sum())


def precision_recall_f1(flagged: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of a flagged set (0 where undefined)."""
    flagged = np.asarray(flagged, dtype=bool)
    positive = np.asarray(positive, dtype=bool)
    tp = int((flagged & positive).sum())
    precision = tp / flagged.sum() if flagged.sum() else 0.0
    recall = tp / positive.sum() if positive.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def detection_metrics(
    scores: np.ndarray, flagged: np.ndarray, positive: np.ndarray
) -> dict[str, float]:
    """AUROC, AP, precision/recall/F1 of the flag, and precision at k = number of errors."""
    positive = np.asarray(positive, dtype=bool)
    k = int(positive.sum())
    top = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    p_at_k = float(positive[top].mean()) if k else float("nan")
    return {
        "auroc": auroc(scores, positive),
        "ap": average_precision(scores, positive),
        **precision_recall_f1(flagged, positive),
        "precision_at_k": p_at_k,
        "flagged": int(np.asarray(flagged, dtype=bool).sum()),
        "errors": k,
    }
