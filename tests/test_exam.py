"""The exam: verified rows scored blind, Wilson intervals, the flag count, gates."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from labelclean import RunConfig, audit
from labelclean.exam import (
    MIN_EXAM,
    MIN_REFERENCE_PER_CLASS,
    SEPARATION_BOUNDS,
    Exam,
    choose_ranking,
    estimate_lines,
    estimates,
    flag_count,
    interval,
    noise_rate_text,
    representativeness,
    says_light,
    separation,
    split_exam,
    wilson,
)
from labelclean.methods.probe import rank_mean
from labelclean.metrics import auroc
from labelclean.scoring import Evidence, score
from tests.conftest import FAST


def test_wilson_interval_known_values_and_coverage():
    p, lo, hi = wilson(0, 50)
    assert p == 0 and lo == 0 and hi == pytest.approx(1.6449**2 / (50 + 1.6449**2), abs=1e-4)
    p, lo, hi = wilson(25, 50)
    assert p == 0.5 and 0.5 - lo == pytest.approx(hi - 0.5)
    assert wilson(5, 0)[1:] == (0.0, 1.0)
    # 90% intervals cover the true rate about 90% of the time (binomial draws, exact check).
    rng = np.random.default_rng(0)
    for rate, n in ((0.05, 60), (0.3, 40), (0.6, 100)):
        ks = rng.binomial(n, rate, 4000)
        covered = np.mean([lo <= rate <= hi for _, lo, hi in (wilson(int(k), n) for k in ks)])
        assert 0.85 <= covered <= 0.97, (rate, n, covered)


def test_split_is_stratified_keeps_a_reference_and_is_deterministic():
    labels = np.repeat(np.arange(4), 30)
    eligible = np.ones(120, dtype=bool)
    eligible[::7] = False
    exam = split_exam(labels, eligible, 4, seed=3)
    assert not (exam & ~eligible).any()
    for k in range(4):
        rows = eligible & (labels == k)
        assert exam[rows].sum() == rows.sum() // 2
        assert (rows & ~exam).sum() >= MIN_REFERENCE_PER_CLASS
    assert (split_exam(labels, eligible, 4, seed=3) == exam).all()
    assert (split_exam(labels, eligible, 4, seed=4) != exam).any()
    few = np.zeros(120, dtype=bool)
    few[: MIN_EXAM + 3] = True  # one class only: half of it is fewer than MIN_EXAM
    assert not split_exam(labels, few, 4, seed=0).any()
    assert not split_exam(labels, eligible, 4, seed=0, share=0).any()


def test_exam_rows_are_decided_blind_then_revealed_as_verified():
    rng = np.random.default_rng(0)
    n, c = 400, 3
    truth = rng.integers(0, c, n)
    given = truth.copy()
    wrong = rng.random(n) < 0.3
    given[wrong] = (truth[wrong] + 1) % c
    # A model that doubts only half the wrong labels, so it underestimates how many there are.
    seen = wrong & (rng.random(n) < 0.5)
    suspicion = np.clip(np.where(seen, rng.beta(4, 2, n), rng.beta(1, 6, n)), 1e-3, 1 - 1e-3)
    belief = np.full((n, c), 0.1)
    belief[np.arange(n), truth] = 0.8
    verified = np.zeros(n, dtype=bool)
    verified[:120] = True
    exam = np.zeros(n, dtype=bool)
    exam[:100] = True
    scored = score(Evidence(suspicion, belief / belief.sum(1, keepdims=True)), given, verified,
                   np.where(verified, truth, given), exam=exam, seed=1, flag_rule="count")
    assert scored.exam is not None and len(scored.exam) == 100
    assert (scored.exam.truth == truth[:100]).all() and scored.exam.flagged.any()
    # Revealed: verified, never flagged or ranked, suggestion is the verified label.
    assert (scored.action[:120] == "verified").all() and not scored.is_suspect[:120].any()
    assert (scored.rank[:120] == 0).all() and (scored.suggested[:120] == truth[:120]).all()
    summary = scored.summary(given, np.where(verified, truth, given), verified, ["a", "b", "c"])
    e = summary["estimates"]
    assert e["exam_rows"] == 100 and e["exam_wrong"] == int(wrong[:100].sum())
    assert e["noise_rate"]["low"] <= wrong[:100].mean() <= e["noise_rate"]["high"]
    assert e["population"] == n - 120 and e["recall"]["n"] == int(wrong[:100].sum())
    assert set(e["noise_rate_per_class"]) == {"a", "b", "c"}
    # The model's estimate is off, so the count flagged over the rows decided is the exam's.
    decided = n - 20
    count, source = flag_count(e["noise_rate"], round(scored.model_noise_rate * decided), decided)
    assert source.startswith("exam") and summary["flag_count_source"] == source
    assert scored.is_suspect.sum() + scored.exam.flagged.sum() == count
    # The F1 cut plans for the ranking the exam measured, blind rows and all.
    f1 = score(Evidence(suspicion, belief / belief.sum(1, keepdims=True)), given, verified,
               np.where(verified, truth, given), exam=exam, seed=1)
    measured = auroc(suspicion[:100], wrong[:100])
    assert f1.flag_count_source.endswith(f"the exam's AUROC {measured:.2f}")
    assert f1.summary(given, np.where(verified, truth, given), verified, ["a", "b", "c"])[
        "estimates"]["ranking_auroc"]["estimate"] == pytest.approx(measured, abs=1e-4)


def _ranked(wrong: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    """A score whose AUROC on ``wrong`` is about ``quality`` (binormal, unit variance)."""
    from statistics import NormalDist
    d = np.sqrt(2) * NormalDist().inv_cdf(quality)
    return 1 / (1 + np.exp(-(rng.normal(0, 1, len(wrong)) + d * wrong)))


def test_choose_ranking_shares_its_level_among_the_alternatives():
    """Each alternative offered is another chance for a lucky exam: one that beats the default
    in 93% of resamples replaces it alone (90%), not beside a second one (95% each)."""
    from labelclean.exam import choice_level

    assert choice_level(1) == pytest.approx(0.9) and choice_level(2) == pytest.approx(0.95)
    rng = np.random.default_rng(1)
    wrong = rng.random(60) < 0.3
    default = _ranked(wrong, 0.75, rng)
    lucky = _ranked(wrong, 0.88, rng)
    alone = choose_ranking(wrong, ("default", default), {"lucky": lucky}, seed=0)
    assert alone is not None and 0.9 <= alone.win_share["lucky"] < 0.95 and alone.chosen == "lucky"
    two = choose_ranking(wrong, ("default", default), {"lucky": lucky, "same": default.copy()}, seed=0)
    assert two is not None and two.win_share["lucky"] == alone.win_share["lucky"]
    assert two.chosen == "default" and two.summary()["level"] == pytest.approx(0.95)


def test_choose_ranking_switches_only_where_the_exam_shows_a_clearly_better_ranking():
    rng = np.random.default_rng(0)
    wrong = rng.random(60) < 0.3
    default = _ranked(wrong, 0.70, rng)
    better = _ranked(wrong, 0.97, rng)
    choice = choose_ranking(wrong, ("default", default), {"better": better}, seed=0)
    assert choice is not None and choice.chosen == "better"
    assert choice.exam_auroc["better"] == pytest.approx(auroc(better, wrong))
    assert choice.exam_auroc["default"] == pytest.approx(auroc(default, wrong))
    assert choice.win_share["better"] >= 0.9
    # Of two that pass, the one that ranks the exam best; a worse one never replaces it.
    best = _ranked(wrong, 0.999, rng)
    worse = _ranked(wrong, 0.5, rng)
    two = choose_ranking(wrong, ("default", default), {"worse": worse, "better": better, "best": best}, 0)
    assert two is not None and two.chosen == "best" and two.win_share["worse"] < 0.9
    # Barely better on the exam is not enough: the default stays.
    close = default + rng.normal(0, 0.02, len(wrong))
    kept = choose_ranking(wrong, ("default", default), {"close": close}, seed=0)
    assert kept is not None and kept.chosen == "default" and kept.win_share["close"] < 0.9
    assert kept.summary()["chosen"] == "default"
    # Deterministic given the seed; None where the exam has too few wrong labels to rank.
    assert choose_ranking(wrong, ("default", default), {"close": close}, seed=0) == kept
    few = np.zeros(60, dtype=bool)
    few[:4] = True
    assert choose_ranking(few, ("default", default), {"better": better}, seed=0) is None


def test_the_audit_orders_by_the_ranking_the_exam_chose_and_says_so():
    rng = np.random.default_rng(1)
    n, c = 600, 3
    truth = rng.integers(0, c, n)
    wrong = rng.random(n) < 0.3
    given = np.where(wrong, (truth + 1) % c, truth)
    default, better = _ranked(wrong, 0.7, rng), _ranked(wrong, 0.97, rng)
    belief = np.full((n, c), 1 / c)
    verified = np.zeros(n, dtype=bool)
    verified[:100] = True
    exam = np.zeros(n, dtype=bool)
    exam[:80] = True
    labels = np.where(verified, truth, given)
    evidence = Evidence(default, belief, members={"a": default, "b": default}, rank_by=default,
                        rank_alternatives={"better": better})
    chosen = score(evidence, given, verified, labels, exam=exam, seed=2)
    free = ~verified
    assert (chosen.suspicion[free] == better[free]).all()
    assert chosen.ranking_choice is not None and chosen.ranking_choice.chosen == "better"
    summary = chosen.summary(given, labels, verified, ["a", "b", "c"])
    assert summary["ranking_choice"]["chosen"] == "better"
    # The exam's AUROC (the flag cut's) is the chosen ranking's.
    assert summary["estimates"]["ranking_auroc"]["estimate"] == pytest.approx(
        auroc(better[:80], wrong[:80]), abs=1e-4)
    # Without an exam there is nothing to choose by: the default orders.
    blind = score(evidence, given, verified, labels, seed=2)
    assert (blind.suspicion[free] == default[free]).all() and blind.ranking_choice is None
    assert "ranking_choice" not in blind.summary(given, labels, verified, ["a", "b", "c"])
    with pytest.raises(ValueError, match="rank_alternatives without rank_by"):
        Evidence(default, belief, rank_alternatives={"better": better})


def test_relabelling_on_the_exam_takes_the_low_end_of_its_auroc_interval():
    """Members too flat to vote: what the audit relabels is what a ranking at the low end of the
    exam's AUROC interval puts at 0.9 or more, not what its point estimate would."""
    from labelclean.exam import separation_interval
    from labelclean.scoring import binormal_posteriors

    rng = np.random.default_rng(3)
    n, c = 900, 3
    truth = rng.integers(0, c, n)
    wrong = rng.random(n) < 0.3
    given = np.where(wrong, (truth + 1) % c, truth)
    suspicion = _ranked(wrong, 0.93, rng)
    belief = np.full((n, c), 0.05)
    belief[np.arange(n), truth] = 0.9  # a clear alternative on every wrong label
    flat = {"a": np.full(n, 0.3) + rng.uniform(0, 1e-3, n), "b": np.full(n, 0.3)}
    verified = np.zeros(n, dtype=bool)
    verified[:100] = True
    labels = np.where(verified, truth, given)
    scored = score(Evidence(suspicion, belief, members=flat, rank_by=suspicion), given, verified,
                   labels, exam=verified, seed=0)
    assert scored.relabel.sum() > 0 and scored.exam_relabels == scored.relabel.sum()
    estimate, low, _high = separation_interval(wrong[:100], suspicion[:100], seed=0)
    assert low < estimate
    decided = n  # the exam rows are decided blind with the rest
    expected = round(wrong[:100].mean() * decided)  # the count follows the exam (the model's is 0)
    # Flat members give no P(wrong) to correct: the prediction-powered rate is the exam's own.
    assert scored.flag_count_source.startswith("exam-corrected model estimate")
    at_low = binormal_posteriors(decided, expected / decided, low) >= 0.9
    at_point = binormal_posteriors(decided, expected / decided, estimate) >= 0.9
    assert scored.relabel.sum() <= at_low.sum() < at_point.sum()


def test_the_flag_count_follows_the_exam_only_when_the_model_is_outside_its_interval():
    rate = interval(30, 100)  # 30% [22.9%, 38.0%]
    assert flag_count(rate, 300, 1000) == (300, "model estimate (inside the exam's interval)")
    count, source = flag_count(rate, 150, 1000)
    assert count == 300 and source.startswith("exam noise rate")
    assert flag_count(None, 150, 1000)[0] == 150


def _population(rng: np.random.Generator, n: int, rate: float, scale: float):
    """Wrong labels and a model P(wrong) that orders them well but sits at ``scale`` of the
    level it should (``scale`` < 1: flat posteriors, as plain cross-entropy training leaves)."""
    wrong = rng.random(n) < rate
    p = np.clip(scale * np.where(wrong, rng.beta(6, 2, n), rng.beta(1, 8, n)), 0, 1)
    return wrong, p


def test_the_noise_rate_is_the_models_p_wrong_corrected_by_the_exam():
    """Prediction-powered: unbiased where the model's level is off, and tighter than the exam."""
    from labelclean.exam import PREDICTION_POWERED, noise_rate

    rng = np.random.default_rng(0)
    wrong, p = _population(rng, 3000, 0.4, 0.5)  # the model's mean says about 20%
    hits, ppi_width, wilson_width, errors = 0, [], [], []
    for _ in range(200):
        exam = np.zeros(len(wrong), dtype=bool)
        exam[rng.choice(len(wrong), 50, replace=False)] = True
        truth = wrong[~exam].mean()
        got = noise_rate(wrong[exam], p[exam], p[~exam])
        assert got["method"] == PREDICTION_POWERED and got["model_weight"] > 1
        hits += got["low"] <= truth <= got["high"]
        errors.append(got["estimate"] - truth)
        ppi_width.append(got["high"] - got["low"])
        own = interval(int(wrong[exam].sum()), 50, int((~exam).sum()))
        wilson_width.append(own["high"] - own["low"])
    assert p.mean() < 0.25 and abs(np.mean(errors)) < 0.01  # the model's bias is gone
    assert hits / 200 >= 0.85  # a 90% interval, give or take the draw
    assert np.median(ppi_width) < 0.7 * np.median(wilson_width)


def test_the_noise_rate_is_the_exams_own_where_the_model_tells_nothing_or_it_cannot_rank():
    from labelclean.exam import noise_rate

    rng = np.random.default_rng(1)
    wrong = np.arange(60) % 3 == 0
    useless = noise_rate(wrong, np.full(60, 0.1), rng.uniform(0, 1, 500))
    assert useless["model_weight"] == 0 and useless["estimate"] == pytest.approx(wrong.mean(), abs=1e-4)
    # Three wrong labels cannot say how the model errs: the exam's proportion, by Wilson.
    few = np.zeros(60, dtype=bool)
    few[:3] = True
    assert noise_rate(few, rng.uniform(0, 1, 60), rng.uniform(0, 1, 500)) == interval(3, 60, 500)


def test_the_audits_noise_rate_is_the_prediction_powered_one_overall_and_per_class():
    """Flat members (plain training) put the model's rate far below the truth; the summary's
    estimate, its count and its per-class rates follow the exam-corrected one."""
    rng = np.random.default_rng(4)
    n, c = 2000, 4
    truth = rng.integers(0, c, n)
    wrong = rng.random(n) < 0.35
    given = np.where(wrong, (truth + 1) % c, truth)
    ranked = np.clip(np.where(wrong, rng.beta(6, 2, n), rng.beta(1, 6, n)), 1e-3, 1 - 1e-3)
    belief = np.full((n, c), 0.1)
    belief[np.arange(n), truth] = 0.7
    members = {"a": 0.5 * ranked, "b": 0.4 * ranked}  # ordered well, their counts low
    verified = np.zeros(n, dtype=bool)
    verified[:120] = True
    labels = np.where(verified, truth, given)
    scored = score(Evidence(ranked, belief, members=members, rank_by=ranked), given, verified,
                   labels, exam=verified, seed=0)
    summary = scored.summary(given, labels, verified, list("abcd"))
    rate = summary["estimates"]["noise_rate"]
    free = ~verified
    true_rate = wrong[free].mean()
    assert rate["method"] == "prediction-powered" and rate["low"] <= true_rate <= rate["high"]
    model = float(scored.p_wrong[free].mean())
    assert abs(summary["estimated_noise_rate"] - true_rate) < abs(model - true_rate) / 2
    assert summary["estimated_noise_rate"] == pytest.approx(rate["estimate"], abs=1e-3)
    assert summary["estimated_errors"] == round(summary["estimated_noise_rate"] * free.sum())
    sizes = np.bincount(given[free], minlength=c)
    per_class = np.array(list(summary["estimated_noise_rate_per_class"].values()))
    assert (per_class * sizes).sum() / sizes.sum() == pytest.approx(summary["estimated_noise_rate"], abs=2e-3)
    # Without an exam, the model's own estimate, unchanged.
    # The terminal summary and report.html say where the rate came from.
    assert "the model's, corrected by the exam" in noise_rate_text(summary)
    assert "(the model corrected by the exam)" in estimate_lines(summary)[0]
    blind = score(Evidence(ranked, belief, members=members, rank_by=ranked), given, verified, labels)
    plain = blind.summary(given, labels, verified, list("abcd"))
    assert noise_rate_text(plain).endswith("(model, no exam)")
    assert plain["estimated_noise_rate"] == pytest.approx(blind.p_wrong[free].mean(), abs=1e-4)


def test_the_flag_count_is_the_prediction_powered_rate_where_there_is_one():
    from labelclean.exam import noise_rate

    wrong, p = _population(np.random.default_rng(2), 1100, 0.4, 0.5)
    rate = noise_rate(wrong[:100], p[:100], p[100:])
    model = round(p.sum())
    count, source = flag_count(rate, model, 1100)  # whatever the model says, the corrected count
    assert count == round(rate["estimate"] * 1100) != model
    assert source == "exam-corrected model estimate (prediction-powered)"


def test_top_n_is_not_claimed_without_wrong_labels_in_the_exam():
    exam = Exam(np.array([0] * 30), np.array([0] * 28 + [1, 1]), np.zeros(30, dtype=bool),
                np.linspace(0, 1, 30))
    e = estimates(exam, 1000, 10, np.linspace(0, 1, 1000), 0.05, ["x", "y"], 0)
    assert e["recall"] is None and "too few" in e["recall_note"] and e["top_n"] == []


def test_the_exam_measures_the_rankings_auroc_with_an_interval():
    rng = np.random.default_rng(3)
    wrong = np.r_[np.ones(15, bool), np.zeros(45, bool)]
    suspicion = np.clip(rng.normal(0.3 + 0.25 * wrong, 0.2), 0, 1)
    a = auroc(suspicion, wrong)
    assert separation(wrong, suspicion) == pytest.approx(np.clip(a, *SEPARATION_BOUNDS))
    assert separation(wrong, 1 - suspicion) == SEPARATION_BOUNDS[0]  # worse than chance: the floor
    assert separation(wrong[11:], suspicion[11:]) is None  # 4 wrong labels: not measurable
    exam = Exam(np.zeros(60, int), np.where(wrong, 1, 0), suspicion > 0.5, suspicion)
    e = estimates(exam, 1000, 100, np.linspace(0, 1, 1000), 0.25, ["x", "y"], 0)
    r = e["ranking_auroc"]
    assert r["estimate"] == pytest.approx(a, abs=1e-4) and r["low"] < r["estimate"] < r["high"]
    assert r["high"] - r["low"] > 0.1  # 15 wrong labels cannot pin it down closely
    summary = {"estimates": e, "flag_count_source": "model estimate"}
    assert any(f"AUROC {a:.2f}" in line for line in estimate_lines(summary))
    assert not any(line.startswith("order:") for line in estimate_lines(summary))
    chose = {**summary, "relabel_by_exam": 7, "ranking_choice": {
        "chosen": "corrected head", "level": 0.9, "exam_auroc": {"default": 0.65, "corrected head": 0.9}}}
    lines = estimate_lines(chose)
    assert "order: the exam chose the corrected head (AUROC 0.90 on the exam rows against the default's 0.65)" in lines
    assert any(line.startswith("7 relabels rest on the exam's") for line in lines)
    kept = {**chose, "relabel_by_exam": 0, "ranking_choice": {**chose["ranking_choice"], "chosen": "default"}}
    assert [line for line in estimate_lines(kept) if line.startswith("order:")] == [
        "order: the default; no other order ranked the exam rows better in 90% of resamples"]
    assert not any("relabels rest" in line for line in estimate_lines(kept))
    two = {**kept, "ranking_choice": {"chosen": "default", "level": 0.95, "exam_auroc": {
        "default": 0.8, "corrected head": 0.82, "plain and corrected heads": 0.81}}}
    assert [line for line in estimate_lines(two) if line.startswith("order:")] == [
        "order: the default; no other order ranked the exam rows better in 95% of resamples "
        "(the 90% level shared among 2 alternatives)"]
    few = estimates(Exam(exam.given[11:], exam.truth[11:], exam.flagged[11:], suspicion[11:]),
                    1000, 100, np.linspace(0, 1, 1000), 0.25, ["x", "y"], 0)
    assert few["ranking_auroc"] is None


def test_the_exam_says_light_only_where_it_cannot_rank_and_its_interval_stays_low():
    def exam(wrong, rows):
        return np.arange(rows) < wrong

    assert says_light(exam(4, 49))  # 8%, at most 17% by Wilson's 90% interval
    assert says_light(exam(0, MIN_EXAM))
    assert not says_light(exam(4, 20))  # as few wrong, but a small exam: up to 37%
    assert not says_light(exam(5, 49))  # enough wrong labels to rank: the exam chooses
    assert not says_light(exam(0, MIN_EXAM - 1))  # no exam
    assert not says_light(exam(45, 49))  # too few right labels to rank: heavy noise


def test_representativeness_warns_on_a_skewed_verified_set():
    given = np.repeat(np.arange(2), 500)
    verified = np.zeros(1000, dtype=bool)
    verified[:60] = True  # all from class 0
    assert "do not look like a random sample" in representativeness(given, verified, given, ["a", "b"])
    verified[:] = False
    verified[::20] = True
    assert representativeness(given, verified, given, ["a", "b"]) is None


def _big_tiny(tmp_path, flips=12):
    from tests.conftest import build_tiny

    tiny = build_tiny(tmp_path, per_class=40, flips=flips)
    truth = tiny.truth
    # A random sample of rows verified (true labels), as a team would verify them.
    pick = np.random.default_rng(0).choice(len(truth), 60, replace=False)
    trusted = tiny.csv.parent / "verified.csv"
    pd.DataFrame({"path": truth["path"].iloc[pick], "label": truth["true"].iloc[pick]}).to_csv(
        trusted, index=False)
    return tiny, trusted


def test_audit_reports_estimates_and_marks_the_exam(tmp_path):
    tiny, trusted = _big_tiny(tmp_path, flips=36)  # enough wrong labels in the exam to rank
    result = audit(RunConfig(dataset=str(tiny.csv), trusted=str(trusted), out=str(tmp_path / "r"),
                             backbone="test_tiny", epochs=3, batch_size=16, image_size=12,
                             report=False))
    s = result.summary
    assert s["exam_rows"] == result.scores["exam"].sum() >= MIN_EXAM
    assert result.scores.loc[result.scores["exam"], "verified"].all()
    e = s["estimates"]
    assert 0 <= e["noise_rate"]["low"] <= e["noise_rate"]["high"] <= 1
    assert e["population"] == s["samples_scored"] and s["flag_count_source"]
    back = pd.read_csv(tmp_path / "r" / "scores.csv")
    assert back["exam"].sum() == s["exam_rows"]
    # auto offers the corrected head's orders; the exam chose among them and the flag cut
    # planned with the chosen order's exam AUROC.
    choice = s["ranking_choice"]
    assert set(choice["exam_auroc"]) == {"default", "corrected head", "final views and corrected head"}
    assert e["ranking_auroc"]["estimate"] == pytest.approx(choice["exam_auroc"][choice["chosen"]], abs=1e-4)
    assert s["method_summary"]["trained_on"] == "ce"  # train_on=auto: the exam can choose
    # The default order leaves the corrected head to the exam: the final views and the plain
    # head, whatever the heads' likelihoods.
    assert s["method_summary"]["ranked_by"] == (
        "final model, shifted views and a cross-fitted head (mean rank; the noise-corrected head "
        "is the exam's alternative)")
    assert choice["chosen"] == "default"  # on this data the exam keeps the default order ...
    every = result.scores  # ... which is the mean rank of the final views and the plain head
    mean_rank = rank_mean(every["final_views_suspicion"].to_numpy(), every["probe_suspicion"].to_numpy())
    along = every.assign(m=mean_rank)[~every["verified"]].sort_values("rank")["m"].to_numpy()
    assert np.all(np.diff(along) <= 1.0 / len(every) + 1e-9)
    assert s["method_summary"]["members_step_every"] == 2  # bystanders: every second batch
    # No trusted set: still works, and says the estimates have no exam behind them.
    bare = audit(RunConfig(dataset=str(tiny.csv), out=str(tmp_path / "bare"), backbone="test_tiny",
                           epochs=2, batch_size=16, image_size=12, report=False))
    assert bare.summary["estimates"]["exam_rows"] == 0 and "no exam" in bare.summary["estimates"]["note"]
    assert sorted(bare.summary["method_summary"]["trained_on"]) == ["ieg", "mlc", "mlnt", "mslg"]
    assert bare.summary["method_summary"]["members_step_every"] == 1


def test_an_exam_that_says_the_noise_is_light_trains_the_network_on_plain_cross_entropy(tmp_path):
    tiny, trusted = _big_tiny(tmp_path, flips=2)
    result = audit(RunConfig(dataset=str(tiny.csv), trusted=str(trusted), out=str(tmp_path / "r"),
                             backbone="test_tiny", epochs=2, batch_size=16, image_size=12,
                             report=False))
    s = result.summary
    assert s["estimates"]["exam_wrong"] < 5 and "ranking_choice" not in s  # cannot rank
    assert s["method_summary"]["trained_on"] == "ce"
    assert s["method_summary"]["trained_on_because"] == "the exam cannot rank, and says the noise is light"


def test_gates_exit_3_after_writing_the_run(tmp_path, cli):
    tiny, trusted = _big_tiny(tmp_path)
    args = ["audit", tiny.csv, "--trusted", trusted, "--out", tmp_path / "r", *FAST]
    code, _, err = cli(*args, "--threshold", "0.05", "--fail-if-flagged-above", "0")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["flagged"] > 0
    assert code == 3 and f"gate crossed: flagged {summary['flagged']} > --fail-if-flagged-above 0" in err
    code, _, err = cli(*args, "--overwrite", "--fail-if-noise-above", "0")
    low = json.loads((tmp_path / "r" / "summary.json").read_text())["estimates"]["noise_rate"]["low"]
    assert (code == 3) == (low > 0) and ("noise rate above 0.0%" in err) == (low > 0)
    assert ("the 90% lower bound of the" in err) == (low > 0)  # and which estimate it was
    code, _, err = cli(*args, "--overwrite", "--fail-if-noise-above", "1", "--fail-if-flagged-above", "100000")
    assert code == 0, err
    code, _, _ = cli(*args, "--overwrite", "--fail-if-noise-above", "1.5")
    assert code == 2


def test_allocation_is_proportional_and_exact():
    from labelclean.verify import allocate

    take = allocate(np.array([500, 300, 200, 7]), 100)
    assert take.sum() == 100 and list(take) == [49, 30, 20, 1]  # largest remainders
    assert list(allocate(np.array([3, 3]), 6)) == [3, 3]


def test_sample_trusted_draws_a_stratified_sample_that_audits_as_the_exam(tmp_path, cli):
    from tests.conftest import build_tiny

    tiny = build_tiny(tmp_path, per_class=40, flips=12)
    out = tmp_path / "verify" / "to_verify.csv"
    code, stdout, err = cli("sample-trusted", tiny.csv, "--n", "60", "--out", out, "--format",
                            "label-studio", "--seed", "3")
    assert code == 0, err
    drawn = pd.read_csv(out)
    assert len(drawn) == 60 and drawn["id"].is_unique
    given = pd.read_csv(tiny.csv).set_index("id")["label"]
    assert drawn["label"].value_counts().to_dict() == given.loc[drawn["id"]].value_counts().to_dict()
    assert abs(drawn["label"].value_counts() - given.value_counts() / 120 * 60).max() <= 1
    assert "interval about" in err and str(out) in stdout
    tasks = json.loads((tmp_path / "verify" / "to_verify-label-studio.json").read_text())
    assert len(tasks) == 60 and tasks[0]["data"]["sample_id"] == drawn["id"][0]
    again = tmp_path / "again.csv"
    assert cli("sample-trusted", tiny.csv, "--n", "60", "--out", again, "--seed", "3")[0] == 0
    assert pd.read_csv(again)["id"].tolist() == drawn["id"].tolist()  # same seed, same draw

    # Reviewers check every task in Label Studio and correct the wrong ones; their export
    # becomes the trusted file, and the audit scores half of it blind.
    truth = tiny.truth.set_index("id")["true"]
    for task in tasks:
        label = truth[task["data"]["sample_id"]]
        task["annotations"] = [{"result": [{"type": "choices", "value": {"choices": [label]}}],
                                "updated_by": 7, "updated_at": "2026-11-22T10:00:00Z"}]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    trusted = tmp_path / "trusted.csv"
    code, _, err = cli("sample-trusted", out, "--from-label-studio", export, "--out", trusted)
    assert code == 0, err
    verified = pd.read_csv(trusted)
    assert len(verified) == 60
    assert (verified["label"].to_numpy() == truth.loc[verified["id"]].to_numpy()).all()
    changed = int((drawn["label"].to_numpy() != truth.loc[drawn["id"]].to_numpy()).sum())
    assert f"60 verified row(s), {changed} relabelled" in err
    code, _, err = cli("audit", tiny.csv, "--trusted", trusted, "--out", tmp_path / "run", *FAST)
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["verified"] == 60 and summary["exam_rows"] >= MIN_EXAM


def test_model_check_warns_when_the_model_learnt_nothing():
    from labelclean.exam import model_check

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 200)
    exam = np.zeros(200, dtype=bool)
    exam[:80] = True
    good = np.eye(4)[truth] * 0.9 + 0.025
    check = model_check(good, truth, exam, ~exam, clean_rate=0.8)
    assert check["on"] == "exam" and check["rows"] == 80 and check["accuracy"]["estimate"] == 1.0
    assert check["warning"] is None
    blind = rng.dirichlet(np.ones(4), 200)
    assert "near chance" in model_check(blind, truth, exam, ~exam, 0.8)["warning"]
    weak = np.where(rng.random((200, 1)) < 0.6, good, np.roll(good, 1, axis=1))
    assert "less often" in model_check(weak, truth, exam, ~exam, 0.95)["warning"]
    none = model_check(good, truth, np.zeros(200, dtype=bool), ~exam, None)
    assert none["on"] == "reference" and none["rows"] == 120


def test_an_audit_that_learnt_nothing_says_so(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for k in "abc":
        for i in range(30):
            path = tmp_path / "ds" / k / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
            rows.append({"path": f"ds/{k}/{i}.png", "label": k})
    pd.DataFrame(rows).sample(60, random_state=0).to_csv(tmp_path / "t.csv", index=False)
    result = audit(RunConfig(dataset=str(tmp_path / "ds"), trusted=str(tmp_path / "t.csv"),
                             out=str(tmp_path / "r"), method="ce", backbone="test_tiny", epochs=2,
                             image_size=8, report=False))
    check = result.summary["model_check"]
    assert check["on"] == "exam" and check["warning"] in result.summary["notes"]


def test_the_noise_rate_interval_covers_the_unverified_rows_when_the_exam_is_a_large_share():
    """Half of 1,500 rows examined: the rate of the *other* 750 varies too (finite population)."""
    from labelclean.exam import interval

    rng = np.random.default_rng(0)
    rows, examined, hits = 1500, 750, 0
    for _ in range(2000):
        wrong = rng.random(rows) < 0.2
        exam = rng.permutation(rows) < examined
        iv = interval(int(wrong[exam].sum()), examined, rows - examined)
        hits += iv["low"] <= wrong[~exam].mean() <= iv["high"]
    assert 0.86 <= hits / 2000 <= 0.94  # 90% intervals; without the correction about 75%
    wide, narrow = interval(30, 200, 200), interval(30, 200)
    assert wide["low"] < narrow["low"] and wide["high"] > narrow["high"]
    assert interval(30, 200, 10**9)["low"] == narrow["low"]


def test_the_noise_rate_interval_keeps_a_width_where_the_exam_holds_no_miss():
    """A model that ranks every exam row perfectly still gets an interval as wide as one miss
    in an exam of that size could make it, around the unchanged estimate."""
    from labelclean.exam import noise_rate

    wrong = np.arange(60) % 4 == 0
    perfect = noise_rate(wrong, wrong.astype(float), np.r_[np.ones(150), np.zeros(350)])
    assert perfect["estimate"] == pytest.approx(0.3)
    assert 0.2 < perfect["low"] < 0.28 and 0.32 < perfect["high"] < 0.4
    # Where the exam shows misses, the extra row changes the width by little.
    wrong, p = _population(np.random.default_rng(3), 1100, 0.4, 0.5)
    rate = noise_rate(wrong[:100], p[:100], p[100:])
    residual = wrong[:100] - rate["model_weight"] * p[:100]
    plain = 1.6449 * np.sqrt(residual.var(ddof=1) * (1 / 100 + 1 / 1000))
    assert plain < (rate["high"] - rate["low"]) / 2 < 1.15 * plain
