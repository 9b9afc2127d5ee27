"""The exam: verified rows scored blind, and the estimates with intervals they give.

A random share of the verified rows that are also dataset rows (the *exam*, stratified by class)
is trained on with its **given** label and scored exactly like every other row, blind to its
verified label; the other verified rows stay the reference set the meta methods need. After
scoring, the exam rows' verified labels measure the audit on the team's own noise:

* the noise rate (given differs from verified), overall and per given class;
* the recall of the flagged set (flagged among wrong), its false-positive rate (flagged among
  right) and its precision (wrong among flagged);
* what reviewing the top N would find.

Every proportion gets a 90% Wilson score interval for the rows it is about (the unverified rows,
the flagged ones, the wrong ones: finite sets disjoint from the exam, so the interval carries
their own sampling variation too, see :func:`wilson`); "reviewing the top N finds about X wrong
labels" combines the noise rate with the recall above the top-N cut, so its interval is a
percentile bootstrap over the exam rows.

The estimates hold if the verified rows are a random sample of the dataset (``labelclean
sample-trusted`` draws one); :func:`representativeness` warns when their class proportions are
visibly not the dataset's. Trusted rows that are not dataset rows are never in the exam.

The split (:data:`EXAM_SHARE`, :data:`MIN_REFERENCE_PER_CLASS`, :data:`MIN_EXAM`) is argued in
docs/benchmarks.md ("Estimates with intervals").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from labelclean.metrics import auroc

#: Share of the verified dataset rows that go to the exam (the rest stays the reference set).
EXAM_SHARE = 0.5
#: Verified rows per class that always stay in the reference set (the meta methods need one).
MIN_REFERENCE_PER_CLASS = 2
#: Fewer exam rows than this and there is no exam: intervals would be too wide to act on.
MIN_EXAM = 20
#: Fewer wrong labels than this among the exam rows, and recall is reported as not estimable.
MIN_WRONG_FOR_RECALL = 5
#: Exam rows needed on each side (wrong labels and right ones) to measure the ranking's AUROC.
MIN_FOR_SEPARATION = 5
#: The range in which the exam's AUROC sets the flag cut (:func:`separation`). Below the floor
#: the ranking is barely better than chance on the team's noise, and the F1-optimal set would be
#: nearly every row; above the ceiling the binormal model is a step and nothing changes.
SEPARATION_BOUNDS = (0.6, 0.99)
NO_EXAM = (f"no exam: fewer than {MIN_EXAM} verified dataset rows could be held out, so these "
           "estimates come from the model alone, with no interval")
#: How the flagged count is described when there is no exam.
NO_EXAM_COUNT = "model estimate (no exam)"
#: "Near chance": accuracy within this share of the way from chance to perfect.
NEAR_CHANCE = 0.1
#: Two-sided 90% intervals.
LEVEL = 0.90
Z = NormalDist().inv_cdf((1 + LEVEL) / 2)  # 1.645
BOOTSTRAP = 2000
#: Total variation distance between the class proportions of the verified rows and the
#: dataset's above which the verified rows are said not to look like a random sample.
MAX_CLASS_SHIFT = 0.15


def wilson(k: int, n: int, z: float = Z, population: int | None = None) -> tuple[float, float, float]:
    """Proportion ``k / n`` with its Wilson score interval: ``(estimate, low, high)``.

    ``population``: the interval is for the proportion in that many *other* rows (the
    unverified ones), not in an endless population, so the estimand varies too: the variance
    is ``p (1 − p) (1/n + 1/population)``, and the interval is Wilson's at the effective size
    ``n · population / (n + population)`` (a finite-population correction for predicting a
    disjoint finite set). ``n == 0`` gives ``(nan, 0, 1)``: nothing is known.
    """
    if n <= 0:
        return math.nan, 0.0, 1.0
    p = k / n
    m = float(n) if not population else n * population / (n + population)
    denom = 1 + z * z / m
    centre = (p + z * z / (2 * m)) / denom
    half = z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def interval(k: int, n: int, population: int | None = None) -> dict[str, Any]:
    """:func:`wilson` as a summary entry; ``population``: the size of the rows it is about."""
    p, lo, hi = wilson(k, n, population=population)
    return {"estimate": None if math.isnan(p) else round(p, 4), "low": round(lo, 4),
            "high": round(hi, 4), "k": int(k), "n": int(n)}


#: Most weight the prediction-powered rate gives the model's P(wrong) (:func:`noise_rate`): it
#: may exceed 1 where the model's posteriors are flatter than its ranking (a network trained on
#: plain cross-entropy leaves them so), but a few dozen exam rows estimate the weight noisily.
MAX_MODEL_WEIGHT = 2.0
PREDICTION_POWERED = "prediction-powered"


def noise_rate(wrong: np.ndarray, p_exam: np.ndarray, p_rest: np.ndarray) -> dict[str, Any]:
    """The noise rate of the rows the exam speaks for, with its 90% interval, as a summary entry.

    ``wrong`` and ``p_exam`` are the exam rows' outcomes and the model's ``P(wrong)`` for them
    (scored blind, like every other row); ``p_rest`` the model's ``P(wrong)`` for the rows the
    estimate is about. Where the exam can rank (:func:`can_rank`), the rate is
    *prediction-powered* (Angelopoulos et al., 2023, "Prediction-powered inference", with the
    power tuning of their PPI++): the model's mean over the rows, corrected by its mean error on
    the exam,

        rate = λ · mean(p_rest) + mean(wrong − λ · p_exam),

    unbiased for any fixed λ, whatever the model's calibration; λ = cov(wrong, p) / var(p) over
    the exam (clipped to [0, :data:`MAX_MODEL_WEIGHT`]) makes its variance
    ``var(wrong − λ p) (1/n + 1/N)`` smallest (the second term: the rows it is about are a finite
    set disjoint from the exam). The interval is that normal one. Where the model ranks
    well the residual is small and the interval far narrower than the exam's own (on MNIST
    2,500, 0.07-0.13 wide against 0.18-0.22); where it does not, λ falls to 0 and this is the
    exam's rate. The variance counts one more exam row than there is, half a miss of each kind
    (:func:`_padded_variance`), so that an exam in which the model happened to miss nothing
    does not read as a model that never misses: the plain plug-in variance gave a 90% interval
    of zero width where the exam's rows were ranked perfectly, and covered the truth in 0.85-0.87
    of replayed exams where the model ranks well (MNIST, CIFAR-10 uniform noise; 0.88-0.96 with
    the extra row, docs/benchmarks.md, "The noise-rate interval: one more exam row").
    Otherwise (too few wrong or right labels to tell how the model errs) it is the exam's own
    proportion with its Wilson interval (:func:`interval`). docs/benchmarks.md, "The
    prediction-powered noise rate".
    """
    wrong = np.asarray(wrong, dtype=bool)
    p_exam = np.asarray(p_exam, dtype=np.float64)
    p_rest = np.asarray(p_rest, dtype=np.float64)
    n, k, size = len(wrong), int(wrong.sum()), len(p_rest)
    if not can_rank(wrong) or not size:
        return interval(k, n, size or None)
    w = wrong.astype(np.float64)
    var_p = float(p_exam.var(ddof=1))
    weight = 0.0 if var_p < 1e-12 else float(np.cov(w, p_exam)[0, 1]) / var_p
    weight = float(np.clip(weight, 0.0, MAX_MODEL_WEIGHT))
    residual = w - weight * p_exam
    rate = weight * float(p_rest.mean()) + float(residual.mean())
    half = Z * math.sqrt(_padded_variance(residual, wrong, p_exam, weight) * (1 / n + 1 / size))
    return {"estimate": round(float(np.clip(rate, 0.0, 1.0)), 4),
            "low": round(max(0.0, rate - half), 4), "high": round(min(1.0, rate + half), 4),
            "k": k, "n": n, "method": PREDICTION_POWERED, "model_weight": round(weight, 4)}


def _padded_variance(residual: np.ndarray, wrong: np.ndarray, p_exam: np.ndarray,
                     weight: float) -> float:
    """The variance of the exam's residuals ``wrong − weight · p`` with two pseudo-rows of
    weight one half: a wrong label that the model scored like the exam's right ones (mean
    ``p``), and a right label that it scored like the wrong ones. Like the Agresti-Coull
    interval's added observations, it keeps the variance of a rare miss in the interval when
    the exam drew none; the estimate itself is unchanged."""
    extra = np.array([1.0 - weight * float(p_exam[~wrong].mean()),
                      -weight * float(p_exam[wrong].mean())])
    values = np.concatenate([residual, extra])
    weights = np.concatenate([np.ones(len(residual)), [0.5, 0.5]])
    mean = float((weights * values).sum() / weights.sum())
    return float((weights * (values - mean) ** 2).sum() / (weights.sum() - 1))


def split_exam(verified_label: np.ndarray, eligible: np.ndarray, num_classes: int, seed: int,
               share: float = EXAM_SHARE) -> np.ndarray:
    """The exam rows: a random ``share`` of the ``eligible`` rows (verified dataset rows) of
    each verified class, leaving at least :data:`MIN_REFERENCE_PER_CLASS` per class in the
    reference set. All ``False`` when that gives fewer than :data:`MIN_EXAM` rows."""
    rng = np.random.default_rng([seed, 0x5EED])
    exam = np.zeros(len(eligible), dtype=bool)
    if share <= 0:
        return exam
    for k in range(num_classes):
        rows = np.flatnonzero(eligible & (verified_label == k))
        take = min(math.floor(share * len(rows)), len(rows) - MIN_REFERENCE_PER_CLASS)
        if take > 0:
            exam[rng.choice(rows, take, replace=False)] = True
    return exam if exam.sum() >= MIN_EXAM else np.zeros_like(exam)


def representativeness(verified_label: np.ndarray, verified: np.ndarray, given: np.ndarray,
                       classes: list[str]) -> str | None:
    """A one-line warning when the verified rows' classes are visibly not the dataset's."""
    c = len(classes)
    if verified.sum() < MIN_EXAM:
        return None
    mine = np.bincount(verified_label[verified], minlength=c) / verified.sum()
    theirs = np.bincount(given, minlength=c) / len(given)
    shift = 0.5 * float(np.abs(mine - theirs).sum())
    if shift <= MAX_CLASS_SHIFT:
        return None
    worst = int(np.argmax(np.abs(mine - theirs)))
    return (f"the verified rows do not look like a random sample of the dataset (class "
            f"proportions differ by {shift:.0%}; {classes[worst]!r}: {mine[worst]:.0%} of the "
            f"verified rows, {theirs[worst]:.0%} of the dataset): the exam's estimates assume a "
            "random sample ('labelclean sample-trusted' draws one)")


@dataclass
class Exam:
    """The exam rows' blind outcomes (all arrays over exam rows only)."""

    given: np.ndarray
    truth: np.ndarray  # verified labels
    flagged: np.ndarray
    suspicion: np.ndarray
    #: :func:`separation_interval` of ``suspicion``, where the decision already measured it.
    auroc_interval: tuple[float, float, float] | None = None
    #: :func:`noise_rate` as the decision planned with it (else the exam's own, by Wilson).
    noise_rate: dict[str, Any] | None = None

    @property
    def wrong(self) -> np.ndarray:
        return self.given != self.truth

    def __len__(self) -> int:
        return len(self.given)


def separation(wrong: np.ndarray, suspicion: np.ndarray) -> float | None:
    """How well the ranking separates wrong labels from right ones on the team's own noise: the
    AUROC of ``suspicion`` over the exam rows, clipped to :data:`SEPARATION_BOUNDS`; ``None``
    with fewer than :data:`MIN_FOR_SEPARATION` wrong or right labels among them.

    The flag cut needs it (:func:`labelclean.scoring.binormal_posteriors`): the model's own
    posteriors say how sure the model is, not how well its ranking does on this noise; on
    CIFAR-10 with human-like noise they imply an AUROC near 0.84 for a ranking at 0.66
    (docs/benchmarks.md, "The flag cut from the exam").
    """
    wrong = np.asarray(wrong, dtype=bool)
    if not can_rank(wrong):
        return None
    return float(np.clip(auroc(suspicion, wrong), *SEPARATION_BOUNDS))


def can_rank(wrong: np.ndarray) -> bool:
    """At least :data:`MIN_FOR_SEPARATION` wrong and as many right labels to rank."""
    return min(int(wrong.sum()), int((~wrong).sum())) >= MIN_FOR_SEPARATION


#: The noise rate up to which the exam's outcome counts as light noise (:func:`says_light`).
LIGHT_NOISE = 0.2


def says_light(wrong: np.ndarray) -> bool:
    """The exam holds too few wrong labels to rank (:func:`can_rank`) and puts the noise rate
    at :data:`LIGHT_NOISE` or below: the high end of its 90% Wilson interval, so that a small
    exam's few wrong labels do not count as light noise (4 wrong of 49 reads as at most 17%; 4
    of 20 as at most 37%). At least :data:`MIN_EXAM` rows.

    ``auto`` then trains the network on plain cross-entropy (``train_on=auto``): at 10% noise on
    CIFAR-10 that ranked human-like and instance noise better than the members' losses did, and
    lost 0.004 AUROC under a class-level flip, which at that rate the network barely learns
    (docs/benchmarks.md, "Light noise: plain training").
    """
    wrong = np.asarray(wrong, dtype=bool)
    if len(wrong) < MIN_EXAM or can_rank(wrong):
        return False
    return wilson(int(wrong.sum()), len(wrong))[2] <= LIGHT_NOISE


#: One-sided bootstrap share with which an alternative ranking must beat the default on the exam
#: before the audit orders by it (:func:`choose_ranking`), for the family of alternatives: each
#: of ``k`` must pass at ``1 − (1 − CHOICE_LEVEL) / k`` (:func:`choice_level`).
CHOICE_LEVEL = 0.9
#: At most this many exam rows decide the choice (a seeded sample beyond): the pairwise table
#: is wrong x right rows, and a few thousand rows already tell rankings apart.
MAX_CHOICE_ROWS = 2000


@dataclass
class RankingChoice:
    """Which ranking the exam chose (:func:`choose_ranking`) and what it measured."""

    chosen: str
    exam_auroc: dict[str, float]
    win_share: dict[str, float]  # per alternative: bootstrap share where it beat the default
    level: float = CHOICE_LEVEL  # the share each alternative had to reach (choice_level)

    def summary(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "level": round(self.level, 4),
                "exam_auroc": {k: round(v, 4) for k, v in self.exam_auroc.items()},
                "win_share": {k: round(v, 4) for k, v in self.win_share.items()}}


def choice_level(alternatives: int) -> float:
    """The bootstrap share each of ``alternatives`` rankings must reach: :data:`CHOICE_LEVEL`
    for the family (Bonferroni), so that offering more orders does not make a lucky one more
    likely to replace the default. With one alternative, :data:`CHOICE_LEVEL` itself."""
    return 1.0 - (1.0 - CHOICE_LEVEL) / max(1, alternatives)


def _pairwise(wrong: np.ndarray, score: np.ndarray) -> np.ndarray:
    """``(wrong, right)`` table: 1 where the wrong row scores above the right one, 0.5 on ties."""
    s = np.asarray(score, dtype=np.float64)
    a, b = s[wrong][:, None], s[~wrong][None, :]
    return (a > b) + 0.5 * (a == b)


def choose_ranking(wrong: np.ndarray, default: tuple[str, np.ndarray],
                   alternatives: dict[str, np.ndarray], seed: int) -> RankingChoice | None:
    """The ranking to order the audit by: ``default``, unless the exam shows an alternative
    ranks the team's own wrong labels better.

    Each ranking is scored on the exam rows (``wrong``: given label differs from the verified
    one). An alternative replaces the default only where its exam AUROC is higher in at least
    :func:`choice_level` of a paired, stratified bootstrap of the exam rows (wrong and right
    rows resampled separately, every ranking on the same draw): :data:`CHOICE_LEVEL` shared
    among the alternatives, since each one offered is another chance for a lucky draw. Of
    those that pass, the one with the highest exam AUROC wins. ``None`` where the exam cannot
    rank (:func:`can_rank`). (At 90% for each of two alternatives, the exam chose the
    corrected head on CIFAR-10 embeddings under human-like noise at 92% and lost 0.013 AUROC;
    at 95% each, no choice on 32 kept image audits changed: docs/benchmarks.md, "The exam's
    choice: one level for all the alternatives".)

    Why: a noise-corrected head ranks a class-level flip far better than the default combination
    and a little worse under instance-dependent noise, and which noise a team has is what the
    exam measures (docs/benchmarks.md, "The exam chooses the ranking").
    """
    wrong = np.asarray(wrong, dtype=bool)
    if not can_rank(wrong):
        return None
    rng = np.random.default_rng([seed, 0xC0053])
    rows = np.arange(len(wrong))
    if len(rows) > MAX_CHOICE_ROWS:
        rows = np.sort(rng.choice(rows, MAX_CHOICE_ROWS, replace=False))
        if not can_rank(wrong[rows]):
            return None
    w = wrong[rows]
    name, base = default
    tables = {k: _pairwise(w, np.asarray(v)[rows]) for k, v in {name: base, **alternatives}.items()}
    n_wrong, n_right = int(w.sum()), int((~w).sum())
    # Bootstrap counts of each wrong and right row; AUROC of a draw = counts_w' table counts_r.
    cw = rng.multinomial(n_wrong, np.full(n_wrong, 1 / n_wrong), size=BOOTSTRAP).astype(np.float64)
    cr = rng.multinomial(n_right, np.full(n_right, 1 / n_right), size=BOOTSTRAP).astype(np.float64)
    exam_auroc = {k: float(t.mean()) for k, t in tables.items()}
    win_share: dict[str, float] = {}
    chosen = name
    level = choice_level(len(alternatives))
    for k in alternatives:
        diff = np.einsum("bi,ij,bj->b", cw, tables[k] - tables[name], cr, optimize=True)
        win_share[k] = float((diff > 0).mean())
        if win_share[k] >= level and exam_auroc[k] > exam_auroc[chosen]:
            chosen = k
    return RankingChoice(chosen, exam_auroc, win_share, level)


def separation_interval(wrong: np.ndarray, suspicion: np.ndarray,
                        seed: int) -> tuple[float, float, float] | None:
    """The exam's AUROC of ``suspicion`` with its 90% percentile bootstrap interval over the exam
    rows: ``(estimate, low, high)``; ``None`` where the exam cannot rank (:func:`can_rank`)."""
    wrong = np.asarray(wrong, dtype=bool)
    suspicion = np.asarray(suspicion, dtype=np.float64)
    if not can_rank(wrong):
        return None
    rng = np.random.default_rng([seed, 0xA0C])
    draws = []
    for idx in rng.integers(0, len(wrong), size=(BOOTSTRAP, len(wrong))):
        a = auroc(suspicion[idx], wrong[idx])
        if not math.isnan(a):
            draws.append(a)
    lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return auroc(suspicion, wrong), float(lo), float(hi)


def _separation_interval(exam: Exam, seed: int) -> dict[str, Any] | None:
    """:func:`separation_interval` of the exam's outcomes, as a summary entry."""
    got = exam.auroc_interval or separation_interval(exam.wrong, exam.suspicion, seed)
    if got is None:
        return None
    return {"estimate": round(got[0], 4), "low": round(got[1], 4), "high": round(got[2], 4)}


def estimates(exam: Exam, population: int, flagged: int, suspicion_free: np.ndarray,
              model_rate: float, classes: list[str], seed: int,
              top_ns: tuple[int, ...] = (100, 500, 1000),
              class_population: np.ndarray | None = None) -> dict[str, Any]:
    """The exam's estimates for the ``population`` unverified rows, with 90% intervals.

    ``flagged`` is the audit's flagged count over those rows; ``suspicion_free`` the suspicion
    of every row the decision ranked (for the top-N cuts); ``model_rate`` the model's own
    estimated noise rate, compared with the exam's.
    """
    wrong = exam.wrong
    n, k = len(exam), int(wrong.sum())
    rate = exam.noise_rate or interval(k, n, population)
    out: dict[str, Any] = {
        "exam_rows": n, "exam_wrong": k, "level": LEVEL, "population": int(population),
        "noise_rate": rate,
        "expected_wrong_labels": {key: (None if rate[key] is None else round(rate[key] * population))
                                  for key in ("estimate", "low", "high")},
        "precision": interval(int((exam.flagged & wrong).sum()), int(exam.flagged.sum()), flagged),
        "false_positive_rate": interval(int((exam.flagged & ~wrong).sum()), int((~wrong).sum())),
    }
    if k >= MIN_WRONG_FOR_RECALL:
        out["recall"] = interval(int((exam.flagged & wrong).sum()), k, round(rate["estimate"] * population))
    else:
        out["recall"] = None
        out["recall_note"] = (f"only {k} wrong label(s) among the {n} exam rows: too few to "
                              f"estimate recall (at least {MIN_WRONG_FOR_RECALL} needed)")
    per_class = {}
    for c, name in enumerate(classes):
        mask = exam.given == c
        size = None if class_population is None else int(class_population[c])
        per_class[name] = interval(int((wrong & mask).sum()), int(mask.sum()), size)
    out["noise_rate_per_class"] = per_class
    # Reviewing the top N rests on the recall above each cut: not estimable without wrong labels.
    out["top_n"] = (_top_n(exam, population, suspicion_free, flagged, seed, top_ns)
                    if out["recall"] is not None else [])
    out["ranking_auroc"] = _separation_interval(exam, seed)
    lo, hi = rate["low"], rate["high"]
    out["model_noise_rate"] = round(model_rate, 4)
    out["model_agrees"] = bool(lo <= model_rate <= hi)
    return out


def _top_n(exam: Exam, population: int, suspicion: np.ndarray, flagged: int, seed: int,
           top_ns: tuple[int, ...]) -> list[dict[str, Any]]:
    """Wrong labels found by reviewing the top N of the ``suspicion`` ranking (the unverified
    rows): ``population * rate * recall(cut_N)`` where ``cut_N`` is the N-th suspicion, capped
    at N, with a percentile bootstrap interval over the exam rows."""
    ranked = np.sort(np.asarray(suspicion, dtype=np.float64))[::-1]
    sizes = sorted({n for n in (*top_ns, flagged) if 0 < n < len(ranked)} | {len(ranked)})
    rng = np.random.default_rng([seed, 0xB007])
    boot = rng.integers(0, len(exam), size=(BOOTSTRAP, len(exam)))
    every = np.arange(len(exam))[None, :]
    wrong = exam.wrong
    out = []
    for size in sizes:
        above = exam.suspicion >= ranked[size - 1]

        def found(idx: np.ndarray, above: np.ndarray = above, size: int = size) -> np.ndarray:
            w = wrong[idx]
            hits = (w & above[idx]).sum(axis=-1)
            n_wrong = w.sum(axis=-1)
            recall = np.divide(hits, n_wrong, out=np.zeros(hits.shape), where=n_wrong > 0)
            return np.minimum(size, w.mean(axis=-1) * population * recall)

        lo, hi = np.quantile(found(boot), [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
        out.append({"top": int(size), "wrong_found": round(float(found(every)[0])),
                    "low": round(float(lo)), "high": round(float(hi)),
                    "is_flagged_count": size == flagged})
    return out


def model_check(final_probs: np.ndarray, verified_label: np.ndarray, exam: np.ndarray,
                reference: np.ndarray, clean_rate: float | None) -> dict[str, Any]:
    """Whether the model learnt anything: its final accuracy against the verified labels.

    On the exam rows (trained on with their given labels, so a model that only memorised them
    scores the clean rate, and one that learnt the classes scores above it), else on the
    reference rows. ``warning`` is a line when the accuracy is near chance or its 90% upper
    bound is below the clean rate (the model does worse than the given labels themselves).
    """
    rows = exam if exam.any() else reference
    if not rows.any():
        return {"rows": 0, "on": "none", "accuracy": None, "warning": None}
    c = final_probs.shape[1]
    hits = int((final_probs[rows].argmax(1) == verified_label[rows]).sum())
    acc = interval(hits, int(rows.sum()))
    chance = 1.0 / c
    warning = None
    if acc["high"] < chance + NEAR_CHANCE * (1 - chance):
        warning = (f"the final model is near chance on the verified rows (accuracy "
                   f"{acc['estimate']:.0%} [{acc['low']:.0%}, {acc['high']:.0%}], chance "
                   f"{chance:.0%}): it learnt little; train longer (--epochs) or use a pretrained "
                   "backbone before trusting these scores")
    elif clean_rate is not None and acc["high"] < clean_rate:
        warning = (f"the final model agrees with the verified labels less often "
                   f"({acc['estimate']:.0%}, at most {acc['high']:.0%}) than the given labels do "
                   f"({clean_rate:.0%}): it has not learnt the classes well enough to judge them; "
                   "train longer (--epochs) or use a pretrained backbone")
    return {"rows": int(rows.sum()), "on": "exam" if exam.any() else "reference",
            "accuracy": acc, "chance": round(chance, 4), "warning": warning}


def flag_count(exam_rate: dict[str, Any] | None, model_count: int, rows: int) -> tuple[int, str]:
    """The number of wrong labels to plan the flag cut for, and where it came from.

    The prediction-powered rate (:func:`noise_rate`) times ``rows`` where there is one: it is
    unbiased and, wherever the model ranks at all, tighter than the exam alone (replayed over
    18 kept benchmark audits, 100 exams each, it raised the mean F1 on 14, left it on 2 and
    lowered it on 2, by 0.009 and 0.005: docs/benchmarks.md, "The prediction-powered noise
    rate"). Otherwise the model's estimated count while the exam's own interval holds it, else
    the exam's rate times ``rows`` (the model is demonstrably off).
    """
    if exam_rate is None or exam_rate["estimate"] is None:
        return model_count, NO_EXAM_COUNT
    if exam_rate.get("method") == PREDICTION_POWERED:
        return (round(exam_rate["estimate"] * rows),
                "exam-corrected model estimate (prediction-powered)")
    model_rate = model_count / rows if rows else 0.0
    if exam_rate["low"] <= model_rate <= exam_rate["high"]:
        return model_count, "model estimate (inside the exam's interval)"
    return round(exam_rate["estimate"] * rows), "exam noise rate (the model's estimate was outside its interval)"


# -- how the estimates read (terminal summary and report.html) -------------------------
def _iv(x: dict | None) -> str:
    """``6.2% [2.5%, 14.6%]``, or ``n/a``."""
    if x is None or x["estimate"] is None:
        return "n/a"
    return f"{x['estimate']:.1%} [{x['low']:.1%}, {x['high']:.1%}]"


def noise_rate_text(summary: dict) -> str:
    """The exam's noise rate with its interval where there is an exam, else the model's."""
    rate = (summary.get("estimates") or {}).get("noise_rate")
    if rate and rate["estimate"] is not None:
        model = summary["estimates"].get("model_noise_rate", summary["estimated_noise_rate"])
        source = ("the model's, corrected by the exam" if rate.get("method") == PREDICTION_POWERED
                  else "exam")
        return f"{_iv(rate)} ({source}; the model alone says {model:.1%})"
    return f"{summary['estimated_noise_rate']:.1%} (model, no exam)"


def estimate_lines(summary: dict) -> list[str]:
    """The exam's estimates with their 90% intervals, as the terminal summary prints them."""
    e = summary.get("estimates") or {}
    if not e.get("exam_rows"):
        return [f"estimates: {e.get('note', 'no exam')}"] if e else []
    rate = e["noise_rate"]
    wrong = e["expected_wrong_labels"]
    lines = [
        f"exam: {e['exam_rows']} verified rows scored blind ({e['exam_wrong']} of them mislabelled); "
        f"90% intervals: noise rate {_iv(rate)}"
        f"{' (the model corrected by the exam)' if rate.get('method') == PREDICTION_POWERED else ''}, about {wrong['estimate']:,} wrong labels "
        f"[{wrong['low']:,}, {wrong['high']:,}] among {e['population']:,}",
        f"flagged set: precision {_iv(e['precision'])}, recall "
        f"{_iv(e['recall']) if e['recall'] else 'n/a (' + e['recall_note'] + ')'}, "
        f"false-positive rate {_iv(e['false_positive_rate'])}; flag count from the "
        f"{summary.get('flag_count_source', 'model estimate')}",
    ]
    if e["top_n"]:
        lines.append("reviewing " + "; ".join(
            f"the top {t['top']:,}{' (flagged)' if t['is_flagged_count'] else ''} finds about "
            f"{t['wrong_found']:,} [{t['low']:,}, {t['high']:,}]" for t in e["top_n"]))
    if e.get("ranking_auroc"):
        a = e["ranking_auroc"]
        lines.append(f"ranking on the exam rows: AUROC {a['estimate']:.2f} [{a['low']:.2f}, {a['high']:.2f}] "
                     "(1.00 puts every wrong label first, 0.50 is chance)")
    choice = summary.get("ranking_choice")
    if choice:
        got = choice["exam_auroc"]
        if choice["chosen"] != "default":
            lines.append(f"order: the exam chose the {choice['chosen']} (AUROC {got[choice['chosen']]:.2f} on the "
                         f"exam rows against the default's {got['default']:.2f})")
        else:
            others = len(choice["exam_auroc"]) - 1
            shared = (f" (the {CHOICE_LEVEL:.0%} level shared among {others} alternatives)"
                      if others > 1 else "")
            lines.append("order: the default; no other order ranked the exam rows better in "
                         f"{choice['level']:.0%} of resamples{shared}")
    if summary.get("relabel_by_exam"):
        lines.append(f"{summary['relabel_by_exam']:,} relabels rest on the exam's measured ranking (the low "
                     "end of its AUROC interval puts them at 90% or more wrong)")
    if not e["model_agrees"]:
        lines.append(f"note: the model's own estimate of the noise rate, {e['model_noise_rate']:.1%}, "
                     f"is outside the exam's interval; the exam is the one to trust")
    return lines
