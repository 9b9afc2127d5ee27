import json

import numpy as np
import pandas as pd
import pytest

from labelclean import RunConfig, audit
from labelclean.errors import ConfigError, DataError
from labelclean.evaluate import evaluate_run
from labelclean.run import schema
from labelclean.simulate import parse_map, simulate, simulate_labels, transition_for
from tests.conftest import tree_digest

C = 4
TRUE = np.repeat(np.arange(C), 2500)


@pytest.mark.parametrize("kind, rate, flip_rate", [
    ("uniform", 0.4, 0.4 * 3 / 4), ("flip-random", 0.3, 0.3), ("flip-to-one", 0.3, 0.3),
    ("pair", 0.2, 0.2),
])
def test_class_noise_realises_rate_and_documented_matrix(kind, rate, flip_rate):
    sim = simulate_labels(TRUE, C, kind, rate, seed=1)
    n = len(TRUE)
    sd = np.sqrt(flip_rate * (1 - flip_rate) / n)
    assert abs(sim.realised_rate - flip_rate) < 4 * sd
    # Every row of the realised matrix is within sampling error of the documented one.
    assert np.allclose(sim.realised, sim.matrix, atol=4 * np.sqrt(0.25 / 2500))
    assert np.allclose(sim.matrix.sum(1), 1)


def test_documented_matrices():
    rng = np.random.default_rng(0)
    t = transition_for("pair", 0.2, 3, rng)
    assert np.allclose(t, [[0.8, 0.2, 0], [0, 0.8, 0.2], [0.2, 0, 0.8]])
    t = transition_for("flip-to-one", 0.3, 3, rng)
    assert np.allclose(np.diag(t), 0.7) and ((t > 0).sum(1) == 2).all()
    t = transition_for("asymmetric", 0.3, 3, rng, {0: 2})
    assert np.allclose(t, [[0.7, 0, 0.3], [0, 1, 0], [0, 0, 1]])


def test_asymmetric_map_and_trusted_are_clean():
    sim = simulate_labels(TRUE, C, "asymmetric", 0.5, seed=0, trusted_per_class=10, mapping={1: 2})
    flipped = sim.noisy != sim.true
    assert set(sim.true[flipped]) == {1} and set(sim.noisy[flipped]) == {2}
    assert not flipped[sim.trusted].any() and sim.trusted.sum() == 40
    with pytest.raises(ConfigError, match="'wolf' is not a class"):
        parse_map("cat:wolf", ["cat", "dog"])


@pytest.mark.parametrize("kind", ["instance", "human", "neighbor"])
def test_feature_noise_on_images(tiny, tmp_path, kind):
    before = tree_digest(tiny.root.parent)
    report = simulate(tiny.csv, tmp_path / "out", kind, 0.25, seed=0, trusted_per_class=2)
    assert tree_digest(tiny.root.parent) == before
    free = 48 - 6
    assert report["flipped"] == round(0.25 * free) if kind in ("instance", "human") else report["flipped"] > 0
    noisy = pd.read_csv(tmp_path / "out" / "noisy.csv")
    truth = pd.read_csv(tmp_path / "out" / "truth.csv")
    assert list(noisy.columns) == ["id", "path", "label", "note", "score"]
    assert (noisy["label"] != truth["label"]).sum() == report["flipped"]
    assert json.loads((tmp_path / "out" / "noise.json").read_text())["realised_rate"] == pytest.approx(
        report["flipped"] / free, abs=1e-6)


def test_human_noise_follows_the_confusions():
    from labelclean.simulate import human_flips

    n = 4000
    true = np.zeros(n, dtype=np.int64)
    probs = np.tile([1.0, 0.0, 0.0], (n, 1))
    probs[:1000] = [0.2, 0.2, 0.6]  # ambiguous: mostly confused with class 2
    rows, target = human_flips(probs, true, np.arange(n), 500, np.random.default_rng(0))
    assert len(set(rows)) == 500 and (target != 0).all()
    assert (rows < 1000).mean() > 0.99  # the clear images are almost never drawn
    assert abs((target == 2).mean() - 0.75) < 0.06  # 0.6 / (0.2 + 0.6) of the confusions


def test_simulate_audit_evaluate_round_trip(tiny, tmp_path, cli):
    code, out, err = cli("simulate", tiny.root, "--noise", "flip-random", "--rate", "0.1",
                         "--trusted-per-class", "2", "--out", tmp_path / "sim")
    assert code == 0, err
    assert "realised rate" in out
    result = audit(RunConfig(dataset=str(tmp_path / "sim" / "noisy.csv"),
                             trusted=str(tmp_path / "sim" / "trusted.csv"), out=str(tmp_path / "run"),
                             backbone="test_tiny", epochs=3, batch_size=12, image_size=12, lr=0.1))
    code, out, err = cli("evaluate", result.run_dir, "--truth", tmp_path / "sim" / "truth.csv", "--format", "json")
    assert code == 0, err
    ev = json.loads(out)
    assert ev["samples"] == 42 and 0 <= ev["auroc"] <= 1
    assert (result.run_dir / "evaluation.json").is_file()


def _fake_run(tmp_path, rows):
    run = tmp_path / "run"
    run.mkdir()
    scores = pd.DataFrame(rows, columns=["sample_id", "given_label", "suggested_label", "suspicion",
                                         "is_suspect", "action", "verified"])
    scores = scores.assign(path=scores["sample_id"], image_path=scores["sample_id"], source="dataset",
                           predicted_label=scores["suggested_label"], p_wrong=scores["suspicion"],
                           rank=pd.array(range(1, len(scores) + 1), dtype="Int64"))
    scores.to_parquet(run / "scores.parquet")
    (run / "summary.json").write_text(json.dumps({"scores_schema_version": schema.SCORES_SCHEMA_VERSION}))
    (run / "config.json").write_text(json.dumps({"dataset": "x"}))
    return run


def test_evaluate_matches_hand_computed_metrics(tmp_path):
    run = _fake_run(tmp_path, [
        ("a", "cat", "dog", 0.9, True, "relabel", False),   # wrong, flagged, fixed
        ("b", "dog", "cat", 0.8, True, "review", False),    # right, flagged (false positive)
        ("c", "cat", "cat", 0.3, False, "keep", False),     # wrong, missed
        ("d", "dog", "dog", 0.1, False, "keep", False),     # right
        ("t", "dog", "dog", 0.0, False, "verified", True),  # trusted: excluded
    ])
    pd.DataFrame({"id": list("abcdt"), "label": ["dog", "dog", "dog", "dog", "dog"]}).to_csv(
        tmp_path / "truth.csv", index=False)
    ev = evaluate_run(run, tmp_path / "truth.csv")
    assert ev["samples"] == 4 and ev["errors"] == 2 and ev["excluded_verified"] == 1
    assert ev["precision"] == 0.5 and ev["recall"] == 0.5 and ev["f1"] == 0.5
    assert ev["auroc"] == pytest.approx(0.75)  # a beats b, d; c beats d only: 3 of 4 pairs
    assert ev["ap"] == pytest.approx((1 + 2 / 3) / 2)
    assert ev["precision_at_k"] == 0.5
    assert ev["suggestion_accuracy_on_errors"] == 0.5
    assert ev["label_accuracy_before"] == 0.5 and ev["label_accuracy_after_relabel"] == 0.75
    assert ev["per_class"]["cat"]["label_accuracy_before"] == 0.0


def test_evaluate_refuses_ids_that_do_not_match(tmp_path):
    run = _fake_run(tmp_path, [("a", "cat", "cat", 0.2, False, "keep", False),
                               ("b", "dog", "dog", 0.2, False, "keep", False)])
    pd.DataFrame({"id": ["a", "zzz"], "label": ["cat", "dog"]}).to_csv(tmp_path / "t1.csv", index=False)
    with pytest.raises(DataError, match="1 sample id\\(s\\) of the run have no truth row"):
        evaluate_run(run, tmp_path / "t1.csv")
    pd.DataFrame({"id": ["a", "b", "c"], "label": ["cat", "dog", "dog"]}).to_csv(tmp_path / "t2.csv", index=False)
    with pytest.raises(DataError, match="1 truth id\\(s\\) are not samples of the run"):
        evaluate_run(run, tmp_path / "t2.csv")
