"""From a method's evidence to one decision per sample: the only module that decides.

Everything that is flagged, relabelled, sent to review, ranked or suggested is decided here,
by :func:`score` (after an audit) and :func:`threshold_flags` (``export --threshold``).
Methods only produce :class:`Evidence`; the audit, ``auto`` and the export call this module.

The rule (docs/methods.md, "Scoring"):

* ``P(wrong)``: for a single method, a two-component Gaussian mixture is fitted (EM) to
  ``logit(suspicion)`` of the unverified samples, one component for labels the model agrees
  with and one for labels it doubts (the approach DivideMix takes with per-sample losses);
  ``P(wrong)`` is the posterior of the doubtful component. For a combination of members
  (``Evidence.members``, as ``auto`` gives), each member is calibrated by its own mixture
  (their raw scores live on different scales) and ``P(wrong)`` is the mean of those.
* **Flagged** (``is_suspect``): most suspicious first, as many as give the highest expected F1
  (:func:`f1_optimal_count`) for the estimated number of wrong labels (the sum of ``P(wrong)``,
  or, with an exam, that sum corrected by the exam: :func:`labelclean.exam.noise_rate`), planned with the posteriors of a ranking as good as the exam measured
  (:func:`binormal_posteriors`) where the exam can measure it; ``flag_rule="count"`` flags
  exactly that number. (Flagging where
  ``P(wrong) >= 0.5`` flags far fewer than the estimate when the components overlap: 431 for
  871 wrong labels on CIFAR-10 with 40% uniform noise, against 651 by the count; the F1 cut
  raised auto's F1 on six of seven CIFAR-10 settings: docs/benchmarks.md, ``levers_f1``.)
* **Relabel**: a flagged sample whose evidence is strong (``P(wrong) >= 0.9``; for a
  combination, at least half the members at ``P(wrong) >= 0.9``, the row inside the count of
  wrong labels and, with an exam that measured the ranking, at a rank that ranking puts at
  one half or more wrong: :func:`decide`) and whose alternative is
  clear (the best other class holds at least half the belief off the given label). Other
  flagged samples go to **review**; the rest are **keep**; verified rows are **verified**.
* ``suggested_label``: the most likely class other than the given one (the proposal if the
  label is wrong); on verified rows, the verified label. ``predicted_label``: ``argmax belief``.
* Rank: by suspicion among unverified rows, 1 = most suspicious; ties keep row order. For a
  combination with ``Evidence.rank_by`` (``auto``: the mean rank of the final model's
  probability of the label over the un-augmented image and two shifted views and of a linear
  head cross-fitted on the final features, :mod:`labelclean.methods.probe`), the
  suspicion is ``rank_by`` and the members' combined posteriors are re-assigned by rank
  (:func:`rank_posteriors`): the order comes from the score that ranks best, the count and the
  level of ``P(wrong)`` from the calibrated members, and the relabel vote stays each sample's
  own. (On CIFAR-10 that ranking beats every member, their combined posterior and the
  late-phase training belief on all seven noise settings: docs/benchmarks.md, ``levers_tta``.)
  With an exam, ``Evidence.rank_alternatives`` may replace ``rank_by``: the exam rows'
  verified labels choose the order (:func:`labelclean.exam.choose_ranking`; the summary's
  ``ranking_choice``), before the flag cut and the estimates use it.
* The estimated noise rate is the mean ``P(wrong)``, overall and per given class.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from labelclean.exam import (
    NO_EXAM,
    NO_EXAM_COUNT,
    SEPARATION_BOUNDS,
    Exam,
    RankingChoice,
    choose_ranking,
    estimates,
    flag_count,
    noise_rate,
    separation,
    separation_interval,
)
from labelclean.run import schema as S

#: P(wrong) at which evidence is strong enough to relabel without review (a 10% error rate
#: among automatic relabels is the most a team should accept unseen).
RELABEL_POSTERIOR = 0.9
#: With the members' vote (``auto``), a row is relabelled only where its own ``P(wrong)`` (the
#: members' posteriors re-assigned by rank) is at least this: the audit does not change a label
#: it reports as more likely right than wrong. On 27 CIFAR-10 ``auto`` runs (docs/benchmarks.md,
#: "Relabelling") this cut the relabels that broke a right label from 41 to 23 and those that
#: fixed a wrong one from 97 to 84; on flip-to-one with an exam it turned 4 fixed / 8 broken into
#: none.
VOTE_MIN_POSTERIOR = 0.5
#: Share of the belief off the given label that the best other class must hold for its
#: suggestion to be applied automatically (otherwise the sample goes to review).
ALTERNATIVE_SHARE = 0.5
#: Weight of the mean raw member score in ``auto``'s ranking: only breaks ties among samples
#: whose calibrated posteriors saturate at 0 or 1.
TIE_BREAK_WEIGHT = 0.001
_EPS = 1e-4
#: The name of ``Evidence.rank_by`` among the rankings the exam chooses from.
DEFAULT_RANKING = "default"
#: Cells per chunk where a dense ``(N, C)`` belief is read (see :func:`alternative`): 4M cells,
#: 32 MB in float64.
CHUNK_CELLS = 1 << 22
_MIN_MIXTURE_SAMPLES = 4


@dataclass
class Evidence:
    """A method's per-sample conclusions, by dataset row.

    ``suspicion`` ``(N,)`` is in [0, 1]; higher means the given label is more likely wrong.
    ``belief`` ``(N, C)`` is the method's class distribution (rows sum to 1); the suggestion
    and the prediction come from it. ``columns`` are extra per-sample columns (named
    ``<method>_<what>``). ``transition`` is a ``(C, C)`` matrix, rows = true class, columns =
    given label, when the method learns one. ``arrays`` are ``(N, C)`` tables saved by class.
    ``members`` holds the suspicion of each member of a combined method; when present, the
    decision calibrates and combines them (see the module docstring). ``rank_by`` (with
    ``members``) is the score that orders the samples in place of the combined posterior; the
    members' posteriors then set the level (:func:`rank_posteriors`). ``rank_alternatives``
    (with ``rank_by``) are other orderings, by name, on ``rank_by``'s scale: where the audit has
    an exam, it orders by one of them instead if the exam shows it ranks the team's wrong labels
    better (:func:`labelclean.exam.choose_ranking`).
    """

    suspicion: np.ndarray
    belief: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    transition: np.ndarray | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    members: dict[str, np.ndarray] | None = None
    rank_by: np.ndarray | None = None
    rank_alternatives: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.suspicion)
        if self.rank_by is not None and len(self.rank_by) != n:
            raise ValueError(f"evidence: rank_by has {len(self.rank_by)} rows, expected {n}")
        if self.rank_alternatives and self.rank_by is None:
            raise ValueError("evidence: rank_alternatives without rank_by")
        for name, values in self.rank_alternatives.items():
            if len(values) != n:
                raise ValueError(f"evidence: ranking {name} has {len(values)} rows, expected {n}")
        if self.belief.shape[0] != n:
            raise ValueError(f"evidence: belief has {self.belief.shape[0]} rows, suspicion {n}")
        for name, values in (self.members or {}).items():
            if len(values) != n:
                raise ValueError(f"evidence: member {name} has {len(values)} rows, expected {n}")


def probs_evidence(probs: np.ndarray, labels: np.ndarray) -> Evidence:
    """Evidence from a user's out-of-sample predicted probabilities (``--pred-probs``):
    ``suspicion = 1 − p(given)``, the belief is the probabilities themselves."""
    probs = np.asarray(probs, dtype=np.float32)
    suspicion = np.clip(1.0 - probs[np.arange(len(labels)), labels].astype(np.float64), 0.0, 1.0)
    return Evidence(suspicion, probs, {"pred_probs_suspicion": suspicion},
                    summary={"source": "pred-probs"})


@dataclass
class Mixture:
    """A two-component 1-D Gaussian mixture over ``logit(suspicion)``; component 1 is "doubtful"."""

    weights: np.ndarray  # (2,)
    means: np.ndarray  # (2,)
    stds: np.ndarray  # (2,)

    def posterior(self, suspicion: np.ndarray) -> np.ndarray:
        """``P(doubtful | suspicion)``, made non-decreasing in suspicion.

        A wide clean component can out-weigh a narrow doubtful one far in the upper tail; the
        posterior is taken as the running maximum over sorted suspicion so that a more
        suspicious sample is never judged less likely to be wrong.
        """
        z = _logit(suspicion)
        logp = np.stack([
            np.log(w) - np.log(s) - 0.5 * ((z - m) / s) ** 2
            for w, m, s in zip(self.weights, self.means, self.stds)
        ])
        logp -= logp.max(0)
        p = np.exp(logp)
        post = p[1] / p.sum(0)
        post = np.where(z >= self.means[0], post, 0.0)
        order = np.argsort(z, kind="stable")
        out = np.empty_like(post)
        out[order] = np.maximum.accumulate(post[order])
        return out


def _logit(s: np.ndarray) -> np.ndarray:
    s = np.clip(np.asarray(s, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(s) - np.log1p(-s)


def fit_mixture(suspicion: np.ndarray, iterations: int = 200) -> Mixture | None:
    """Fit the two-component mixture by EM; ``None`` when the scores do not separate."""
    z = _logit(suspicion)
    if len(z) < _MIN_MIXTURE_SAMPLES or np.ptp(z) < 1e-6:
        return None
    lo, hi = np.quantile(z, [0.25, 0.95])
    means = np.array([lo, hi])
    floor = max(1e-3, 0.01 * float(np.std(z)))
    stds = np.array([np.std(z), np.std(z)]) + floor
    weights = np.array([0.8, 0.2])
    for _ in range(iterations):
        logp = np.stack([
            np.log(w) - np.log(s) - 0.5 * ((z - m) / s) ** 2
            for w, m, s in zip(weights, means, stds)
        ])
        logp -= logp.max(0)
        r = np.exp(logp)
        r /= r.sum(0)
        nk = r.sum(1) + 1e-12
        new_means = (r * z).sum(1) / nk
        stds = np.sqrt((r * (z - new_means[:, None]) ** 2).sum(1) / nk) + floor
        weights = np.clip(nk / len(z), 1e-6, 1.0)
        if np.allclose(new_means, means, atol=1e-7):
            means = new_means
            break
        means = new_means
    if means[1] < means[0]:
        means, stds, weights = means[::-1], stds[::-1], weights[::-1]
    if means[1] - means[0] < 1e-3:
        return None
    return Mixture(weights.copy(), means.copy(), stds.copy())


def calibrate(suspicion: np.ndarray, fit_rows: np.ndarray) -> np.ndarray | None:
    """``P(wrong | suspicion)`` for every row from a mixture fitted on ``fit_rows``.

    ``None`` when the scores of ``fit_rows`` do not separate into two components.
    """
    mixture = fit_mixture(suspicion[fit_rows]) if fit_rows.sum() >= _MIN_MIXTURE_SAMPLES else None
    return None if mixture is None else mixture.posterior(suspicion)


@dataclass
class Combined:
    """Members calibrated one by one and combined: ``auto``'s evidence, decided."""

    p_wrong: np.ndarray  # mean of the members' calibrated P(wrong)
    suspicion: np.ndarray  # ranking score: p_wrong, ties broken by the mean raw score
    strong: np.ndarray  # at least half the members put P(wrong) >= RELABEL_POSTERIOR
    member_p_wrong: dict[str, np.ndarray]
    votes: np.ndarray  # members at P(wrong) >= RELABEL_POSTERIOR


def combine_members(members: dict[str, np.ndarray], fit_rows: np.ndarray) -> Combined:
    """Calibrate each member by its own mixture and combine by the mean probability.

    A plain mean of raw scores mixes scales (MLC's posteriors sit near 0, IEG's fractions near
    0.5), which broke the flag count on CIFAR-10 (2,428 flagged for 900 errors); the mean of
    calibrated probabilities flagged 916. A member whose components overlap never reaches 0.9,
    so the mean alone would block almost every relabel; a vote of half the members does not.
    """
    if not members:
        raise ValueError("combine_members: no members")
    posteriors = {}
    for name, s in members.items():
        p = calibrate(np.asarray(s, dtype=np.float64), fit_rows)
        posteriors[name] = np.zeros(len(s)) if p is None else p
    p_wrong = np.mean(list(posteriors.values()), axis=0)
    raw = np.mean([np.asarray(s, dtype=np.float64) for s in members.values()], axis=0)
    suspicion = np.clip((1 - TIE_BREAK_WEIGHT) * p_wrong + TIE_BREAK_WEIGHT * raw, 0.0, 1.0)
    votes = np.sum([p >= RELABEL_POSTERIOR for p in posteriors.values()], axis=0)
    strong = votes >= math.ceil(len(posteriors) / 2)
    return Combined(p_wrong, suspicion, strong, posteriors, votes)


def rank_posteriors(order_by: np.ndarray, posterior: np.ndarray) -> np.ndarray:
    """The posteriors re-assigned by rank: the sample ranked k by ``order_by`` (descending)
    gets the k-th largest of ``posterior``.

    A quantile mapping from a score that orders well to probabilities whose level is
    calibrated: the sum (the estimated count of wrong labels) and the distribution of
    ``posterior`` are unchanged, and ``P(wrong)`` never falls as the rank rises, so the flagged
    set (the top of the ranking) is also the set of highest ``P(wrong)``. Ties in
    ``order_by`` keep row order.
    """
    order_by = np.asarray(order_by, dtype=np.float64)
    out = np.empty(len(order_by), dtype=np.float64)
    out[np.argsort(-order_by, kind="stable")] = np.sort(np.asarray(posterior, dtype=np.float64))[::-1]
    return out


@dataclass
class Decision:
    """Per-sample outcome over the rows scored (verified rows are handled by :func:`score`)."""

    posterior: np.ndarray  # P(label wrong | suspicion)
    is_suspect: np.ndarray
    relabel: np.ndarray
    threshold: float
    relabel_threshold: float
    threshold_method: str
    count_source: str = "estimated count"  # where the flagged count came from
    #: Rows relabelled on the exam's posterior where the members' vote was short (see :func:`decide`).
    by_exam: np.ndarray | None = None


def alternative(belief: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The most likely class other than the given one, and its share of the belief off it.

    ``belief`` is ``(N, C)``; returns ``(alt (N,), share (N,) in [0, 1])``. Works
    :data:`CHUNK_CELLS` cells at a time in float64, so the only dense table is the caller's
    (a float64 copy of the whole belief is 8 GB at a million rows and a thousand classes).
    """
    n = len(given)
    chunk = max(1, CHUNK_CELLS // max(1, belief.shape[1]))
    alt = np.zeros(n, dtype=np.int64)
    share = np.zeros(n)
    for i in range(0, n, chunk):
        off = np.array(belief[i:i + chunk], dtype=np.float64)
        rows = np.arange(len(off))
        off[rows, given[i:i + chunk]] = 0.0
        a = off.argmax(1)
        total = off.sum(1)
        alt[i:i + chunk] = a
        share[i:i + chunk] = np.divide(off[rows, a], total, out=np.zeros(len(a)), where=total > 0)
    return alt, share


def binormal_posteriors(n: int, prevalence: float, separation: float, grid: int = 4001) -> np.ndarray:
    """``P(wrong)`` of the rows ranked ``1..n`` by a score with AUROC ``separation`` when a
    share ``prevalence`` of the labels is wrong, most suspicious first.

    The equal-variance binormal model (Swets; Hanley & McNeil, 1982): the score is ``N(0, 1)`` on
    right labels and ``N(d, 1)`` on wrong ones, ``d = √2 Φ⁻¹(AUROC)``. The row at rank ``i`` sits
    at the score whose mixture survival is ``(i − ½) / n``, and its posterior is Bayes' at that
    score. A weak ranking gives flat posteriors (at AUROC 0.5 every row gets ``prevalence``),
    a strong one a step at ``prevalence · n``; the sum is about ``prevalence · n`` either way.
    Only the AUROC and the prevalence enter, not the score's scale, so the exam can supply both.
    """
    if n <= 0:
        return np.zeros(0)
    pi = float(np.clip(prevalence, 1e-6, 1 - 1e-6))
    d = math.sqrt(2.0) * NormalDist().inv_cdf(float(np.clip(separation, 0.5, 1 - 1e-6)))
    t = np.linspace(-9.0, d + 9.0, grid)
    erfc = np.vectorize(math.erfc)
    surv = (1 - pi) * 0.5 * erfc(t / math.sqrt(2.0)) + pi * 0.5 * erfc((t - d) / math.sqrt(2.0))
    log_odds = math.log(pi / (1 - pi)) + d * t - 0.5 * d * d  # log φ(t − d) − log φ(t)
    post = 1.0 / (1.0 + np.exp(-log_odds))
    quantile = (np.arange(n) + 0.5) / n
    return np.interp(quantile, surv[::-1], post[::-1])  # surv falls as t rises


def f1_optimal_count(p_in_rank_order: np.ndarray, expected_errors: float) -> int:
    """The ``k`` whose top-``k`` flagged set has the highest expected F1.

    ``p_in_rank_order`` are the rows' ``P(wrong)`` from most to least suspicious, and
    ``expected_errors`` the number of wrong labels (their sum, or the exam's count). Flagging the
    top ``k`` finds ``sum(p[:k])`` wrong labels in expectation, so the expected F1 is about
    ``2·sum(p[:k]) / (k + expected_errors)`` (the ratio of expectations; Nan et al., 2012,
    "Optimizing F-measures: a tale of two approaches"). Where the posteriors are near 0 or 1
    this is the expected count; where the ranking is weak it is more, since each extra row
    flagged still raises recall more than it lowers precision while ``p > F1 / 2`` (Lipton et
    al., 2014, "Optimal thresholding of classifiers to maximize F1 measure").
    """
    p = np.clip(np.asarray(p_in_rank_order, dtype=np.float64), 0.0, 1.0)
    if expected_errors <= 0 or not len(p):
        return 0
    f1 = 2.0 * np.cumsum(p) / (np.arange(1, len(p) + 1) + expected_errors)
    return int(np.argmax(f1)) + 1


def decide(
    suspicion: np.ndarray,
    confident: np.ndarray,
    threshold: float | None = None,
    posterior: np.ndarray | None = None,
    strong: np.ndarray | None = None,
    count: Callable[[np.ndarray, int], tuple[int, str]] | None = None,
    flag_rule: str = "f1",
    separation: float | None = None,
    relabel_separation: float | None = None,
) -> Decision:
    """Flag and choose actions. ``threshold`` (if given) replaces the derived flag threshold.

    ``confident`` marks samples whose suggested alternative is clear enough to apply
    automatically; only those can be ``relabel``. ``posterior`` is a calibrated
    ``P(label wrong)`` (from :func:`combine_members`); without it the mixture is fitted to
    ``suspicion``. ``strong`` (the members' vote) replaces the ``P(wrong) >= 0.9`` relabel rule, for rows
    whose ``posterior`` is at least :data:`VOTE_MIN_POSTERIOR`, that rank within the count of
    wrong labels the audit plans for, and, where the exam measured the ranking
    (``relabel_separation``), whose rank the posterior of a ranking that good puts at
    :data:`VOTE_MIN_POSTERIOR` or more: a label that the audit's own count, or its exam, says is
    more likely right is not changed unseen. (A member whose mixture models the bulk of its
    scores votes on a quarter of the rows; on CIFAR-10 at 10% noise such votes broke 43 and 42
    right labels to fix 17 and 7: docs/benchmarks.md, "Relabelling inside the count".)
    ``count`` maps the posterior and the count of wrong labels it estimates to the count to
    plan for and its source (the exam's, :func:`labelclean.exam.flag_count`). ``flag_rule``:
    ``count`` flags that many, ``f1`` the number with the highest expected F1
    (:func:`f1_optimal_count`, the posteriors scaled to sum to that count). ``separation``: the
    ranking's AUROC as the exam measured it (:func:`labelclean.exam.separation`); the F1 cut
    then uses the posteriors a ranking that good gives at that count
    (:func:`binormal_posteriors`) instead of the model's, which are sharper than its ranking
    on structured noise. With ``strong`` and ``relabel_separation`` (the low end of the exam's
    90% interval for that AUROC), a flagged row whose alternative is clear is also relabelled
    where the posterior a ranking that good gives its rank reaches :data:`RELABEL_POSTERIOR`:
    even a ranking at the exam's lower bound puts at least nine in ten rows at that rank wrong,
    where the members' own posteriors are too flat to vote (a network trained on plain
    cross-entropy, ``auto``'s default with an exam, leaves them so).
    """
    mixture = fit_mixture(suspicion) if posterior is None else None
    if posterior is not None:
        posterior = np.asarray(posterior, dtype=np.float64)
        method = "members' calibrated posterior"
    elif mixture is not None:
        posterior = mixture.posterior(suspicion)
        method = "mixture"
    else:
        posterior = np.zeros_like(suspicion, dtype=np.float64)
        method = "mixture (no separation: nothing flagged)"
    relabel_t = _crossing(suspicion, posterior, RELABEL_POSTERIOR)
    order = np.argsort(-suspicion, kind="stable")  # most suspicious first
    expected = round(float(posterior.sum())) if len(posterior) else 0
    source = "estimated count"
    if count is not None:
        expected, source = count(posterior, expected)
    flagged = expected
    if flag_rule == "f1" and expected > 0 and separation is not None:
        in_order = binormal_posteriors(len(suspicion), expected / len(suspicion), separation)
        flagged = f1_optimal_count(in_order, expected)
        source += f" and the exam's AUROC {separation:.2f}"
    elif flag_rule == "f1" and expected > 0:
        in_order = posterior[order]
        total = float(in_order.sum())
        scaled = in_order * (expected / total) if total > 0 else in_order
        flagged = f1_optimal_count(scaled, expected)
    if flagged > 0:
        flag_t = float(np.sort(suspicion)[::-1][min(flagged, len(suspicion)) - 1])
        method += f": {source}" + (", F1-optimal cut" if flag_rule == "f1" else "")
    else:
        flag_t = 1.0 + _EPS  # nothing is estimated wrong: nothing is flagged
    if threshold is not None:
        flag_t, method = float(threshold), "user"
        relabel_t = max(relabel_t, flag_t)
    is_suspect = suspicion >= flag_t
    strong_enough = (suspicion >= relabel_t if strong is None
                     else np.asarray(strong, dtype=bool) & (posterior >= VOTE_MIN_POSTERIOR))
    by_exam = np.zeros(len(suspicion), dtype=bool)
    if strong is not None:  # the vote stays inside the audit's own count of wrong labels
        strong_enough &= _top(order, expected)
    if strong is not None and relabel_separation is not None and expected > 0:
        exam_posterior = np.empty(len(suspicion))
        exam_posterior[order] = binormal_posteriors(
            len(suspicion), expected / len(suspicion), relabel_separation)
        strong_enough &= exam_posterior >= VOTE_MIN_POSTERIOR
        by_exam = ~strong_enough & (exam_posterior >= RELABEL_POSTERIOR)
    relabel = is_suspect & (strong_enough | by_exam) & confident
    return Decision(posterior, is_suspect, relabel, flag_t, relabel_t, method, source,
                    relabel & by_exam)


def _top(order: np.ndarray, k: int) -> np.ndarray:
    """Rows among the first ``k`` of ``order`` (most suspicious first)."""
    out = np.zeros(len(order), dtype=bool)
    out[order[:max(0, k)]] = True
    return out


def _crossing(suspicion: np.ndarray, posterior: np.ndarray, level: float) -> float:
    """The smallest suspicion whose posterior reaches ``level`` (1.0 if none does)."""
    hits = suspicion[posterior >= level]
    return float(hits.min()) if hits.size else 1.0


def ranks(suspicion: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """1-based rank by descending suspicion among ``eligible`` rows; 0 elsewhere.

    Ties keep row order (a stable sort), so equal suspicion never reverses ranks.
    """
    out = np.zeros(len(suspicion), dtype=np.int64)
    idx = np.flatnonzero(eligible)
    order = idx[np.argsort(-np.asarray(suspicion)[idx], kind="stable")]
    out[order] = np.arange(1, len(order) + 1)
    return out


@dataclass
class Scored:
    """The decision for every row of a run (class indices; the run writer names them)."""

    suspicion: np.ndarray  # ranking score; 0 on verified rows
    p_wrong: np.ndarray  # P(label wrong); 0 on verified rows
    is_suspect: np.ndarray
    relabel: np.ndarray
    action: np.ndarray  # object: relabel / review / keep / verified
    suggested: np.ndarray  # class index: best other class (verified label on verified rows)
    predicted: np.ndarray  # class index: argmax belief
    rank: np.ndarray  # 1-based among unverified rows, 0 on verified rows
    decision: Decision
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # extra per-sample columns
    member_estimated_errors: dict[str, int] = field(default_factory=dict)
    exam: Exam | None = None  # the exam rows' blind outcomes
    flag_count_source: str = NO_EXAM_COUNT
    model_noise_rate: float = 0.0  # mean P(wrong) over the rows decided, exam rows included
    seed: int = 0
    ranking_choice: RankingChoice | None = None  # the exam's choice among the rankings
    exam_relabels: int = 0  # relabels the exam's posterior allowed where the vote did not

    def noise_rate(self, free: np.ndarray) -> tuple[float, float, float]:
        """The audit's estimated noise rate over the unverified rows ``free``, and how it maps
        the model's per-class rates onto it: ``(rate, weight, shift)``, a class's rate being
        ``weight · mean P(wrong) + shift``.

        Without an exam: the model's mean ``P(wrong)`` (weight 1, shift 0). With one: the rate
        the flag cut planned with (:func:`labelclean.exam.flag_count`), the prediction-powered
        one where the exam can rank; its correction, ``mean(wrong − λ p)`` over the exam, is
        the same for every class (the exam is too small to correct each class on its own).
        """
        model = float(self.p_wrong[free].mean()) if free.any() else 0.0
        planned = None if self.exam is None else self.exam.noise_rate
        if planned is None or planned["estimate"] is None or not free.any():
            return model, 1.0, 0.0
        rows = int(free.sum())
        count, _ = flag_count(planned, round(model * rows), rows)
        weight = float(planned.get("model_weight", 1.0))
        return count / rows, weight, count / rows - weight * model

    def summary(self, given: np.ndarray, verified_label: np.ndarray, verified: np.ndarray,
                classes: list[str]) -> dict[str, Any]:
        free = ~verified
        rate, weight, shift = self.noise_rate(free)
        per_class = {}
        for k, name in enumerate(classes):
            mask = free & (given == k)
            per_class[name] = (round(float(np.clip(weight * self.p_wrong[mask].mean() + shift, 0, 1)), 4)
                               if mask.any() else 0.0)
        out: dict[str, Any] = {
            "flagged": int(self.is_suspect.sum()),
            "relabel": int(self.relabel.sum()),
            "relabel_by_exam": self.exam_relabels,
            "review": int((self.is_suspect & ~self.relabel).sum()),
            "verified_corrections": int((verified & (verified_label != given)).sum()),
            "threshold": round(self.decision.threshold, 6),
            "relabel_threshold": round(self.decision.relabel_threshold, 6),
            "threshold_method": self.decision.threshold_method,
            "estimated_errors": round(rate * int(free.sum())),
            "estimated_noise_rate": round(rate, 4),
            "estimated_noise_rate_per_class": per_class,
        }
        if self.member_estimated_errors:
            out["member_estimated_errors"] = self.member_estimated_errors
        out["flag_count_source"] = self.flag_count_source
        if self.ranking_choice is not None:
            out["ranking_choice"] = self.ranking_choice.summary()
        if self.exam is not None:
            out["estimates"] = estimates(
                self.exam, int(free.sum()), int(self.is_suspect.sum()), self.suspicion[free],
                self.model_noise_rate, classes, self.seed,
                class_population=np.bincount(given[free], minlength=len(classes)))
        else:
            out["estimates"] = {"exam_rows": 0, "note": NO_EXAM}
        return out


def score(
    evidence: Evidence,
    given: np.ndarray,
    verified: np.ndarray,
    verified_label: np.ndarray,
    threshold: float | None = None,
    exam: np.ndarray | None = None,
    seed: int = 0,
    flag_rule: str = "f1",
) -> Scored:
    """Decide every row from ``evidence``.

    ``given`` ``(N,)`` are the given labels' class indices, ``verified`` marks rows with a
    verified label ``verified_label`` (elsewhere it equals ``given``). ``threshold`` replaces the
    derived flag threshold (``audit --threshold``). ``exam`` marks verified rows that were
    trained on blind (:mod:`labelclean.exam`): they are decided like unverified rows, their
    outcomes kept for the estimates, then revealed as verified rows.
    """
    given = np.asarray(given, dtype=np.int64)
    verified = np.asarray(verified, dtype=bool)
    exam = np.zeros(len(given), dtype=bool) if exam is None else np.asarray(exam, dtype=bool)
    reveal = verified & exam
    verified = verified & ~exam  # decided blind; revealed below
    free = ~verified
    belief = np.asarray(evidence.belief)  # (N, C), any float dtype: never copied here
    suspicion = np.asarray(evidence.suspicion, dtype=np.float64).copy()
    columns: dict[str, np.ndarray] = {}
    posterior = strong = None
    choice: RankingChoice | None = None
    member_errors: dict[str, int] = {}
    exam_wrong = given[reveal] != np.asarray(verified_label)[reveal]
    if evidence.members:
        combined = combine_members(evidence.members, free)
        suspicion, posterior, strong = combined.suspicion.copy(), combined.p_wrong, combined.strong
        if evidence.rank_by is not None:  # order by rank_by, the level from the members
            suspicion = np.clip(np.asarray(evidence.rank_by, dtype=np.float64), 0.0, 1.0)
            if evidence.rank_alternatives and reveal.any():
                choice = choose_ranking(
                    exam_wrong, (DEFAULT_RANKING, suspicion[reveal]),
                    {k: np.asarray(v, dtype=np.float64)[reveal] for k, v in evidence.rank_alternatives.items()},
                    seed)
                if choice is not None and choice.chosen != DEFAULT_RANKING:
                    suspicion = np.clip(np.asarray(evidence.rank_alternatives[choice.chosen],
                                                   dtype=np.float64), 0.0, 1.0)
            posterior = posterior.copy()
            posterior[free] = rank_posteriors(suspicion[free], combined.p_wrong[free])
        for name, p in combined.member_p_wrong.items():
            columns[f"{name}_p_wrong"] = p
            member_errors[name] = round(float(p[free].sum()))
        columns["strong_votes"] = combined.votes
    alt, share = alternative(belief, given)
    count = None
    ranking_auroc = relabel_auroc = measured = None
    planned: dict[str, Any] = {}
    if reveal.any():
        ranking_auroc = separation(exam_wrong, suspicion[reveal])
        measured = separation_interval(exam_wrong, suspicion[reveal], seed)
        if measured is not None:  # relabel on what even the interval's low end supports
            relabel_auroc = float(np.clip(measured[1], *SEPARATION_BOUNDS))

        in_exam = reveal[free]

        def count(p: np.ndarray, expected: int) -> tuple[int, str]:
            planned["rate"] = noise_rate(exam_wrong, p[in_exam], p[~in_exam])
            return flag_count(planned["rate"], expected, int(free.sum()))

    decision = decide(
        suspicion[free], share[free] >= ALTERNATIVE_SHARE, threshold,
        None if posterior is None else posterior[free], None if strong is None else strong[free],
        count, flag_rule, ranking_auroc, relabel_auroc,
    )
    model_rate = float(decision.posterior.mean()) if free.any() else 0.0
    n = len(given)
    p_wrong = np.zeros(n)
    p_wrong[free] = decision.posterior
    is_suspect = np.zeros(n, dtype=bool)
    is_suspect[free] = decision.is_suspect
    relabel = np.zeros(n, dtype=bool)
    relabel[free] = decision.relabel
    by_exam = np.zeros(n, dtype=bool)
    if decision.by_exam is not None:
        by_exam[free] = decision.by_exam
    outcome = None
    if reveal.any():
        outcome = Exam(given[reveal], np.asarray(verified_label)[reveal], is_suspect[reveal].copy(),
                       suspicion[reveal].copy(), measured, planned.get("rate"))
        verified = verified | reveal
        free = ~verified
        p_wrong[reveal] = 0.0
        is_suspect[reveal] = relabel[reveal] = False
    suspicion[verified] = 0.0
    suggested = np.where(verified, verified_label, alt)
    action = np.where(relabel, S.RELABEL, np.where(is_suspect, S.REVIEW, S.KEEP)).astype(object)
    action[verified] = S.VERIFIED_ACTION
    return Scored(suspicion, p_wrong, is_suspect, relabel, action, suggested,
                  belief.argmax(1), ranks(suspicion, free), decision, columns, member_errors,
                  outcome, decision.count_source if reveal.any() else NO_EXAM_COUNT, model_rate,
                  seed, choice, int((by_exam & ~reveal).sum()))


def threshold_flags(suspicion: np.ndarray, verified: np.ndarray, threshold: float) -> np.ndarray:
    """``export --threshold``: flag every unverified row with ``suspicion >= threshold``.

    The export then applies the suggestion of every such row (the user chose the cut, so the
    audit's relabel bar does not apply).
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold: expected a value in (0, 1), found {threshold}")
    return (np.asarray(suspicion, dtype=np.float64) >= threshold) & ~np.asarray(verified, dtype=bool)


def transition_from_labels(true: np.ndarray, given: np.ndarray, num_classes: int) -> np.ndarray:
    """``T[i, j] = P(given = j | true = i)`` from label pairs; rows with no samples are identity."""
    counts = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(counts, (true, given), 1.0)
    rows = counts.sum(1, keepdims=True)
    out = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    out[rows[:, 0] == 0] = np.eye(num_classes)[rows[:, 0] == 0]
    return out
