import itertools
from statistics import NormalDist

import numpy as np
import pytest
import torch

from labelclean.metrics import auroc, average_precision, detection_metrics, precision_recall_f1
from labelclean.scoring import (
    Evidence,
    alternative,
    binormal_posteriors,
    combine_members,
    decide,
    f1_optimal_count,
    fit_mixture,
    rank_posteriors,
    ranks,
    score,
    threshold_flags,
    transition_from_labels,
)
from labelclean.train.augment import random_crop_flip, shifted
from labelclean.train.loop import learning_rate


def _bimodal(n_clean=900, n_noisy=100, seed=0):
    rng = np.random.default_rng(seed)
    clean = 1 / (1 + np.exp(-rng.normal(-4, 1.0, n_clean)))
    noisy = 1 / (1 + np.exp(-rng.normal(3, 1.0, n_noisy)))
    return np.concatenate([clean, noisy]), np.r_[np.zeros(n_clean, bool), np.ones(n_noisy, bool)]


def test_mixture_threshold_separates_two_populations_and_tracks_their_size():
    s, noisy = _bimodal()
    d = decide(s, np.ones(len(s), bool))
    assert d.threshold_method == "mixture: estimated count, F1-optimal cut"
    assert abs(int(d.is_suspect.sum()) - round(d.posterior.sum())) <= 2  # sure posteriors: the count
    assert abs(int(d.is_suspect.sum()) - int(noisy.sum())) <= 5
    assert precision_recall_f1(d.is_suspect, noisy)["f1"] > 0.97
    assert d.relabel_threshold >= d.threshold
    assert (d.relabel <= d.is_suspect).all()


def test_posterior_never_decreases_with_suspicion():
    s, _ = _bimodal(seed=3)
    post = fit_mixture(s).posterior(s)
    order = np.argsort(s)
    assert (np.diff(post[order]) >= -1e-12).all()


def test_no_separation_flags_nothing_and_user_threshold_wins():
    s = np.full(50, 0.3)
    d = decide(s, np.ones(50, bool))
    assert not d.is_suspect.any()
    d = decide(s, np.ones(50, bool), threshold=0.2)
    assert d.is_suspect.all() and d.threshold_method == "user"


def test_relabel_needs_a_clear_alternative():
    s, _noisy = _bimodal()
    d = decide(s, np.zeros(len(s), bool))
    assert d.is_suspect.any() and not d.relabel.any()


def test_a_vote_does_not_relabel_a_row_the_audit_reports_as_probably_right():
    """The members' vote relabels flagged rows, but not one whose own P(wrong) is below one half
    (flagged far down a long F1 cut: reviewed, not changed unseen)."""
    s = np.linspace(1.0, 0.0, 10)
    post = np.array([0.95, 0.9, 0.7, 0.55, 0.45, 0.3, 0.2, 0.1, 0.05, 0.01])
    d = decide(s, np.ones(10, bool), threshold=0.25, posterior=post, strong=np.ones(10, bool))
    assert d.is_suspect.sum() == 7
    assert d.relabel.tolist() == [True] * 4 + [False] * 6


def test_a_vote_relabels_only_inside_the_count_and_where_the_exam_puts_the_rank_at_half_or_more():
    """A member mixture that models the bulk of its scores votes on rows far down the ranking;
    the vote relabels only rows among the audit's count of wrong labels and, where the exam
    measured the ranking, whose rank a ranking that good (its interval's low end) puts at one
    half or more wrong."""
    n = 1000
    s = np.linspace(1.0, 0.0, n)
    sure = np.full(n, 0.95)  # every member at 0.9 or more: the vote is everywhere
    everyone = np.ones(n, dtype=bool)

    def count(p, expected):
        return 100, "exam"

    inside = decide(s, everyone, threshold=0.0, posterior=sure, strong=everyone, count=count)
    assert inside.is_suspect.all()  # the user's threshold flags every row ...
    assert inside.relabel.tolist() == [True] * 100 + [False] * (n - 100)  # ... the count bounds the vote
    measured = decide(s, everyone, threshold=0.0, posterior=sure, strong=everyone, count=count,
                      separation=0.8, relabel_separation=0.8)
    half = binormal_posteriors(n, 0.1, 0.8) >= 0.5
    assert 0 < half.sum() < 100
    assert measured.relabel.tolist() == half.tolist()
    weak = decide(s, everyone, threshold=0.0, posterior=sure, strong=everyone, count=count,
                  separation=0.6, relabel_separation=0.6)
    assert not weak.relabel.any()  # no rank reaches one half under a ranking that weak


def test_the_exam_relabels_where_it_measured_a_ranking_good_enough_and_the_vote_was_short():
    """Members too flat to vote (none at 0.9, P(wrong) low): an exam whose AUROC interval starts
    at 0.99 at 30% wrong puts the top of the ranking past 0.9, and those rows with a clear
    alternative are relabelled; from 0.7 no rank reaches 0.9 and nothing is. The point
    estimate (the flag cut's) alone relabels nothing: the route takes the interval's low end."""
    n = 1000
    s = np.linspace(1.0, 0.0, n)
    flat = np.full(n, 0.2)
    confident = np.ones(n, dtype=bool)
    confident[1] = False  # no clear alternative: reviewed, never relabelled

    def count(p, expected):
        return 300, "exam"

    no = np.zeros(n, dtype=bool)
    good = decide(s, confident, posterior=flat, strong=no, count=count, separation=0.99,
                  relabel_separation=0.99)
    want = binormal_posteriors(n, 0.3, 0.99) >= 0.9
    assert 100 < want.sum() < 300  # the top of the ranking, not the whole flagged set
    assert good.relabel.tolist() == (want & confident & good.is_suspect).tolist()
    assert good.by_exam is not None and (good.by_exam == good.relabel).all()
    weak = decide(s, confident, posterior=flat, strong=no, count=count, separation=0.99,
                  relabel_separation=0.7)
    assert weak.is_suspect.any() and not weak.relabel.any()
    # Without the interval's low end the members' vote alone decides, as before.
    assert not decide(s, confident, posterior=flat, strong=no, count=count).relabel.any()
    assert not decide(s, confident, posterior=flat, strong=no, count=count, separation=0.99).relabel.any()
    # A row the vote relabels counts as the vote's, not the exam's.
    vote = decide(s, confident, posterior=np.full(n, 0.95), strong=np.ones(n, bool), count=count,
                  separation=0.99, relabel_separation=0.99)
    assert vote.relabel.sum() > good.relabel.sum() and vote.by_exam is not None and not vote.by_exam.any()


def test_alternative_is_the_best_other_class_with_its_share():
    belief = np.array([[0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.5, 0.25, 0.25]])
    alt, share = alternative(belief, np.array([0, 2, 0]))
    assert alt.tolist() == [1, 0, 1]
    assert np.allclose(share, [0.75, 0.5, 0.5])


def test_alternative_reads_the_belief_in_chunks_without_changing_it(monkeypatch):
    import labelclean.scoring as scoring

    rng = np.random.default_rng(0)
    belief = rng.dirichlet(np.ones(7), size=50).astype(np.float32)
    given = rng.integers(0, 7, 50)
    before = belief.copy()
    whole = alternative(belief, given)
    monkeypatch.setattr(scoring, "CHUNK_CELLS", 42)  # 6 rows of 7 classes
    chunked = alternative(belief, given)
    assert np.array_equal(whole[0], chunked[0]) and np.allclose(whole[1], chunked[1])
    assert np.array_equal(belief, before)  # the caller's table is never written
    off = belief.astype(np.float64)
    off[np.arange(50), given] = 0
    assert np.array_equal(chunked[0], off.argmax(1))
    assert np.allclose(chunked[1], off.max(1) / off.sum(1))


def test_transition_rows_sum_to_one_and_empty_rows_are_identity():
    t = transition_from_labels(np.array([0, 0, 0, 1]), np.array([0, 1, 1, 1]), 3)
    assert np.allclose(t, [[1 / 3, 2 / 3, 0], [0, 1, 0], [0, 0, 1]])


def test_metrics_match_hand_computed_values():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    positive = np.array([True, False, True, False, False])
    # positives at ranks 1 and 3: AP = (1/1 + 2/3) / 2
    assert average_precision(scores, positive) == pytest.approx((1 + 2 / 3) / 2)
    # pairs (pos > neg): 0.9 beats 3 negatives, 0.7 beats 2 -> 5 of 6
    assert auroc(scores, positive) == pytest.approx(5 / 6)
    assert auroc(np.ones(4), np.array([1, 0, 1, 0], bool)) == pytest.approx(0.5)
    m = detection_metrics(scores, scores > 0.75, positive)
    assert (m["precision"], m["recall"], m["precision_at_k"]) == (0.5, 0.5, 0.5)


def test_learning_rate_warms_up_then_decays_to_zero():
    lrs = [learning_rate(0.1, s, 100, 10) for s in range(101)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))


def test_crop_flip_is_a_per_sample_shift_or_mirror():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    out = random_crop_flip(x, g, padding=0, flip=True)
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    out = random_crop_flip(x, torch.Generator().manual_seed(1), padding=2, flip=False)
    assert out.shape == x.shape
    # Every output pixel is either zero padding or a pixel of the same image.
    for i in range(2):
        values = set(out[i].flatten().tolist()) - {0.0}
        assert values <= set(x[i].flatten().tolist())


def test_a_shifted_view_moves_the_image_and_fills_with_zeros():
    x = torch.arange(1, 2 * 3 * 5 * 5 + 1, dtype=torch.float32).view(2, 3, 5, 5)
    out = shifted(x, 1, -1)  # the content of row i + 1, column j - 1 lands at (i, j)
    assert out.shape == x.shape
    assert torch.equal(out[..., :-1, 1:], x[..., 1:, :-1])
    assert (out[..., -1, :] == 0).all() and (out[..., :, 0] == 0).all()
    assert torch.equal(shifted(x, -2, 2)[..., 2:, :-2], x[..., :-2, 2:])
    assert torch.equal(shifted(x, 0, 0), x)


def test_overlapping_components_flag_the_estimated_count_for_review_only():
    rng = np.random.default_rng(0)
    s = 1 / (1 + np.exp(-np.concatenate([rng.normal(0.0, 0.5, 800), rng.normal(0.3, 0.5, 200)])))
    d = decide(s, np.ones(len(s), bool), flag_rule="count")
    expected = round(d.posterior.sum())
    assert d.posterior.max() < 0.5  # the situation under test: no sample is likelier wrong
    assert d.is_suspect.sum() == expected > 0
    assert not d.relabel.any()
    assert s[d.is_suspect].min() >= s[~d.is_suspect].max()


def test_flagged_count_is_the_estimate_for_a_method_posterior():
    rng = np.random.default_rng(1)
    post = rng.uniform(0, 1, 200) ** 3
    s = post + rng.normal(0, 0.01, 200)
    d = decide(s, np.ones(200, bool), posterior=post, flag_rule="count")
    assert d.threshold_method == "members' calibrated posterior: estimated count"
    assert d.is_suspect.sum() == round(post.sum())
    assert s[d.is_suspect].min() >= s[~d.is_suspect].max()


def test_f1_cut_is_the_count_when_posteriors_are_sure_and_more_when_they_are_weak():
    sure = np.r_[np.ones(30), np.zeros(70)]
    assert f1_optimal_count(sure, 30) == 30
    assert f1_optimal_count(np.full(100, 0.3), 30) == 100  # every row still adds more than F1/2
    assert f1_optimal_count(np.full(100, 0.3), 0) == 0


def test_f1_cut_beats_the_count_in_expected_f1_on_weak_posteriors():
    """Draw the truth from the posteriors many times: flagging the F1-optimal number finds a
    higher mean F1 than flagging the expected count, and never a lower one on sure posteriors."""
    rng = np.random.default_rng(0)
    p = np.sort(rng.beta(0.6, 1.8, 2000))[::-1]  # weak: a long middle of uncertain rows
    expected = round(p.sum())
    k = f1_optimal_count(p, expected)
    assert k > expected * 1.2

    def mean_f1(top):
        truth = rng.random((400, len(p))) < p
        found = truth[:, :top].sum(1)
        return float(np.mean(2 * found / (top + truth.sum(1))))

    assert mean_f1(k) > mean_f1(expected) + 0.01
    s = np.linspace(1, 0, 2000)
    d_f1 = decide(s, np.ones(2000, bool), posterior=p, flag_rule="f1")
    d_count = decide(s, np.ones(2000, bool), posterior=p, flag_rule="count")
    assert d_f1.is_suspect.sum() == k and d_count.is_suspect.sum() == expected
    assert d_f1.threshold_method.endswith("F1-optimal cut")
    assert not (d_f1.relabel & ~d_count.relabel).any() or (p[d_f1.relabel] >= 0.9).all()


def test_f1_cut_plans_for_the_exams_count():
    """With an exam that sets the count, the posteriors are scaled to it before the cut."""
    p = np.r_[np.full(50, 0.9), np.full(950, 0.05)]  # the model expects about 92
    s = np.linspace(1, 0, 1000)
    low = decide(s, np.ones(1000, bool), posterior=p, count=lambda p, e: (e, "model"))
    high = decide(s, np.ones(1000, bool), posterior=p, count=lambda p, e: (300, "exam"))
    assert high.is_suspect.sum() > low.is_suspect.sum()


def test_binormal_posteriors_sum_to_the_count_and_rank_as_well_as_the_auroc_says():
    """Truth drawn from the posteriors ranks, in rank order, with the AUROC they were built for;
    chance gives flat posteriors and a near-perfect ranking a step at the count."""
    n, pi = 3000, 0.3
    assert np.allclose(binormal_posteriors(n, pi, 0.5), pi)
    step = binormal_posteriors(n, pi, 0.999)
    assert step[:800].min() > 0.95 and step[1000:].max() < 0.05
    rng = np.random.default_rng(0)
    for a in (0.62, 0.75, 0.9):
        p = binormal_posteriors(n, pi, a)
        assert np.all(np.diff(p) <= 1e-12) and abs(p.sum() - n * pi) < 0.01 * n
        truth = rng.random((40, n)) < p
        rank_score = np.arange(n, 0, -1)
        realised = np.mean([auroc(rank_score, t) for t in truth])
        assert abs(realised - a) < 0.01, (a, realised)


def test_the_exams_auroc_flags_what_a_ranking_that_good_should():
    """A weak ranking (AUROC 0.66) at 40% noise whose posteriors claim more: the cut planned for
    the measured AUROC finds a higher F1 than the one planned on the sharp posteriors."""
    rng = np.random.default_rng(1)
    n = 4000
    wrong = rng.random(n) < 0.4
    d = np.sqrt(2) * NormalDist().inv_cdf(0.66)  # AUROC 0.66 under the binormal model
    s = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + d * wrong)))
    a = auroc(s, wrong)
    sharp = rank_posteriors(s, binormal_posteriors(n, 0.4, 0.85))  # what the members claim
    plain = decide(s, np.ones(n, bool), posterior=sharp, count=lambda p, e: (round(0.4 * n), "exam"))
    measured = decide(s, np.ones(n, bool), posterior=sharp, count=lambda p, e: (round(0.4 * n), "exam"),
                      separation=a)
    f1 = [precision_recall_f1(x.is_suspect, wrong)["f1"] for x in (plain, measured)]
    assert measured.is_suspect.sum() > plain.is_suspect.sum() * 1.3
    assert f1[1] > f1[0] + 0.03, f1
    assert "the exam's AUROC" in measured.threshold_method and measured.count_source.startswith("exam")
    # P(wrong) itself stays the model's: only the cut moves.
    assert np.array_equal(measured.posterior, plain.posterior)


# -- the combination auto hands to scoring: calibration and votes ------------------------

def test_members_on_different_scales_are_calibrated_before_they_are_averaged():
    s, noisy = _bimodal(seed=1)
    members = {"a": s, "b": 0.4 + 0.2 * s}  # same ranking, squeezed into [0.4, 0.6]
    combined = combine_members(members, np.ones(len(s), bool))
    # Each member's own mixture puts both on the probability scale; raw means would not.
    for name in members:
        assert abs(combined.member_p_wrong[name].sum() - noisy.sum()) <= 10
    assert np.mean(list(members.values()), axis=0).sum() > 2 * noisy.sum()
    assert abs(combined.p_wrong.sum() - noisy.sum()) <= 5
    assert precision_recall_f1(combined.p_wrong >= 0.5, noisy)["f1"] > 0.97


def test_a_member_that_does_not_separate_adds_nothing_and_cannot_vote():
    s, _noisy = _bimodal(seed=2)
    flat = np.full(len(s), 0.3)
    combined = combine_members({"a": s, "b": s, "flat": flat}, np.ones(len(s), bool))
    assert (combined.member_p_wrong["flat"] == 0).all()
    assert np.allclose(combined.p_wrong, 2 / 3 * combined.member_p_wrong["a"])
    # Two of three members at P(wrong) >= 0.9 carry the relabel vote (ceil(3/2) = 2).
    strong_rows = combined.member_p_wrong["a"] >= 0.9
    assert (combined.votes[strong_rows] == 2).all() and combined.strong[strong_rows].all()
    assert not combined.strong[~strong_rows].any()


def test_relabel_vote_needs_half_the_members():
    n = 200
    rng = np.random.default_rng(0)
    high = np.r_[rng.uniform(0.0, 0.1, 150), rng.uniform(0.95, 1.0, 50)]
    members = {"a": high, "b": high[::-1].copy(), "c": high[::-1].copy(), "d": high[::-1].copy()}
    combined = combine_members(members, np.ones(n, bool))
    only_a = (combined.member_p_wrong["a"] >= 0.9) & (combined.member_p_wrong["b"] < 0.9)
    assert only_a.any() and not combined.strong[only_a].any()  # 1 of 4 is not half


def test_score_decides_every_row_once_with_one_meaning_of_suggested():
    s, _noisy = _bimodal(n_clean=90, n_noisy=10, seed=4)
    n = len(s)
    given = np.zeros(n, dtype=int)
    belief = np.tile([0.2, 0.5, 0.3], (n, 1))  # argmax 1; best other than 0 is 1 too
    belief[:5] = [0.1, 0.2, 0.7]  # argmax 2
    verified = np.zeros(n, bool)
    verified[:3] = True
    verified_label = given.copy()
    verified_label[0] = 2
    scored = score(Evidence(s, belief, members={"a": s, "b": s}), given, verified, verified_label)
    assert (scored.action[:3] == "verified").all() and (scored.suspicion[:3] == 0).all()
    assert scored.suggested[0] == 2 and scored.suggested[1] == 0  # the verified label
    assert (scored.suggested[3:5] == 2).all() and (scored.suggested[5:] == 1).all()  # best other
    assert (scored.predicted[:5] == 2).all() and (scored.predicted[5:] == 1).all()
    assert (scored.rank[:3] == 0).all() and sorted(scored.rank[3:]) == list(range(1, n - 2))
    assert scored.is_suspect.sum() == round(scored.p_wrong[~verified].sum())
    assert set(scored.columns) == {"a_p_wrong", "b_p_wrong", "strong_votes"}


def test_rank_by_orders_the_samples_and_the_members_set_the_level():
    s, noisy = _bimodal(n_clean=180, n_noisy=20, seed=5)
    n = len(s)
    rng = np.random.default_rng(5)
    better = np.where(noisy, 0.6, 0.3) + rng.uniform(0, 0.05, n)  # separates the two perfectly
    members = {"a": s, "b": s}
    given, verified = np.zeros(n, dtype=int), np.zeros(n, bool)
    belief = np.tile([0.2, 0.8], (n, 1))
    plain = score(Evidence(s, belief, members=members), given, verified, given)
    ranked = score(Evidence(s, belief, members=members, rank_by=better), given, verified, given)
    assert (ranked.suspicion == np.clip(better, 0, 1)).all()
    assert (ranked.rank[np.argsort(-better)] == np.arange(1, n + 1)).all()
    # The level (count, distribution of P(wrong)) is the members'; the order is rank_by's.
    assert ranked.p_wrong.sum() == pytest.approx(plain.p_wrong.sum())
    assert np.allclose(np.sort(ranked.p_wrong), np.sort(plain.p_wrong))
    order = np.argsort(ranked.rank)
    assert (np.diff(ranked.p_wrong[order]) <= 1e-12).all()  # P(wrong) never rises down the ranking
    assert ranked.is_suspect.sum() == plain.is_suspect.sum()
    assert precision_recall_f1(ranked.is_suspect, noisy)["f1"] >= precision_recall_f1(plain.is_suspect, noisy)["f1"]
    assert rank_posteriors(np.array([0.1, 0.9, 0.5]), np.array([0.2, 0.7, 0.0])).tolist() == [0.0, 0.7, 0.2]


def test_ties_keep_row_order_in_rank():
    assert ranks(np.array([0.5, 0.9, 0.9, 0.9, 0.1]), np.ones(5, bool)).tolist() == [4, 1, 2, 3, 5]


def test_threshold_flags_never_flag_verified_rows():
    flags = threshold_flags(np.array([0.9, 0.9, 0.1]), np.array([False, True, False]), 0.5)
    assert flags.tolist() == [True, False, False]
    with pytest.raises(ValueError):
        threshold_flags(np.zeros(1), np.zeros(1, bool), 1.5)


def test_average_precision_ignores_row_order_within_ties():
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    a = average_precision(scores, np.array([True, False, True, False]))
    b = average_precision(scores, np.array([True, True, False, False]))
    assert a == b == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # scikit-learn's value for both
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([True, False, True])) == (
        pytest.approx((1 + 2 / 3) / 2))
