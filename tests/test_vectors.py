"""Bring your own model: ``--features`` (embeddings) and ``--pred-probs`` (probabilities)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from labelclean import RunConfig, audit
from labelclean.errors import DataError
from labelclean.methods.probe import head_suspicions, rank_mean
from labelclean.metrics import auroc

CLASSES = ["ant", "bee", "cow", "doe"]


@pytest.fixture
def vec(tmp_path):
    """600 rows of 16-d Gaussian blobs (one per class), 60 wrong labels, 60 verified rows."""
    return _blobs(tmp_path)


def _blobs(tmp_path, n_wrong=60, n_verified=60):
    rng = np.random.default_rng(0)
    n, d, c = 600, 16, len(CLASSES)
    true = np.repeat(np.arange(c), n // c)
    centres = rng.normal(0, 3, (c, d))
    x = (centres[true] + rng.normal(0, 1, (n, d))).astype(np.float32)
    given = true.copy()
    wrong = rng.choice(n, n_wrong, replace=False)
    given[wrong] = (true[wrong] + rng.integers(1, c, len(wrong))) % c
    ids = [f"s{i:04d}" for i in range(n)]
    manifest = tmp_path / "labels.csv"
    pd.DataFrame({"id": ids, "label": np.array(CLASSES)[given]}).to_csv(manifest, index=False)
    verified = rng.choice(n, n_verified, replace=False)
    trusted = tmp_path / "trusted.csv"
    pd.DataFrame({"id": np.array(ids)[verified], "label": np.array(CLASSES)[true[verified]]}).to_csv(
        trusted, index=False)
    emb = tmp_path / "emb.parquet"
    order = rng.permutation(n)  # rows meet by id, not by position
    pd.DataFrame({"id": np.array(ids)[order], "embedding": list(x[order])}).to_parquet(emb)
    np.save(tmp_path / "emb.npy", x)
    return {"manifest": manifest, "trusted": trusted, "emb": emb, "npy": tmp_path / "emb.npy",
            "x": x, "true": true, "given": given, "ids": ids, "tmp": tmp_path}


def _wrong(run, v):
    scores = run.scores.set_index("sample_id").loc[v["ids"]]
    free = ~scores["verified"].to_numpy()
    return scores, free, (v["given"] != v["true"])


def test_features_audit_finds_the_wrong_labels_without_images(vec):
    config = RunConfig(dataset=str(vec["manifest"]), trusted=str(vec["trusted"]),
                       features=str(vec["emb"]), out=str(vec["tmp"] / "run"), epochs=8)
    run = audit(config)
    scores, free, wrong = _wrong(run, vec)
    assert run.summary["input"] == "features"
    assert auroc(scores["suspicion"].to_numpy()[free], wrong[free]) > 0.95
    flagged = scores["is_suspect"].to_numpy()
    assert (flagged & wrong).sum() >= 0.8 * (wrong & free).sum()
    assert (scores["suggested_label"].to_numpy()[flagged & wrong]
            == np.array(CLASSES)[vec["true"][flagged & wrong]]).mean() > 0.9
    # No path column: the corrected manifest is the input's columns plus the audit's.
    corrected = pd.read_csv(run.run_dir / "corrected.csv")
    assert "path" not in corrected.columns and list(corrected.columns[:2]) == ["id", "label"]
    assert (run.run_dir / "report.html").is_file()
    # Time and peak memory per stage, report included (benchmarks/scale.py reads them).
    saved = json.loads((run.run_dir / "summary.json").read_text())
    stages = saved["timings"]["stages"]
    assert [s["stage"] for s in stages] == ["read manifest", "read features", "train", "score",
                                            "write", "report"]
    peaks = [s["peak_rss_mb"] for s in stages]
    assert all(p > 50 for p in peaks) and peaks == sorted(peaks)  # a running peak
    assert sum(s["seconds"] for s in stages) <= saved["timings"]["total_seconds"] + 0.01


def test_auto_on_features_ranks_by_the_late_belief_and_heads_cross_fitted_on_the_vectors(vec):
    run = audit(RunConfig(dataset=str(vec["manifest"]), trusted=str(vec["trusted"]),
                          features=str(vec["emb"]), out=str(vec["tmp"] / "run"), epochs=3, report=False))
    summary = run.summary["method_summary"]
    assert summary["ranked_by"].startswith("late-phase belief and ")
    scores, free, wrong = _wrong(run, vec)
    # The heads score each row blind to its label, on the vectors as given: a row's label
    # cannot pull its own probability up, and the blobs are separable, so they rank almost exactly.
    assert auroc(scores["probe_suspicion"].to_numpy()[free], wrong[free]) > 0.97
    assert auroc(scores["probe_corrected_suspicion"].to_numpy()[free], wrong[free]) > 0.97
    trained_verified = scores["verified"] & ~scores["exam"]  # exam rows train on their given label
    labels = torch.as_tensor([CLASSES.index(v) for v in
                              scores["given_label"].where(~trained_verified, scores["suggested_label"])])

    late = scores["late_suspicion"].to_numpy()

    def heads_on(x, prior=late):
        return head_suspicions(torch.from_numpy(x), labels, len(CLASSES), trained_verified.to_numpy(),
                               prior=prior)

    # The vectors are features the run did not train: the plain head is weighted by the late
    # belief's ranking (stored to 6 decimals, so the weights, and the head, are not exact).
    heads = heads_on(vec["x"])
    off = np.abs(heads.plain - scores["probe_suspicion"].to_numpy()).mean()
    assert off < 1e-4
    assert np.abs(heads.corrected - scores["probe_corrected_suspicion"].to_numpy()).max() < 1e-6
    # The run's transition matrix is the heads' EM estimate (MLC's is in its member summary).
    assert summary["transition_from"] == "noise-corrected head (EM)"
    saved_t = pd.read_csv(run.run_dir / "transition_matrix.csv", index_col=0)
    assert list(saved_t.index) == list(saved_t.columns) == CLASSES
    assert np.abs(saved_t.to_numpy() - heads.transition).max() <= 5e-5
    unweighted = heads_on(vec["x"], prior=None)
    assert np.abs(unweighted.plain - scores["probe_suspicion"].to_numpy()).mean() > 5 * off
    standardised = (vec["x"] - vec["x"].mean(0)) / vec["x"].std(0)  # the network's own input
    assert np.abs(heads_on(standardised).plain - scores["probe_suspicion"].to_numpy()).mean() > 5 * off
    # The audit's order is the mean rank of the late belief and the heads (the corrected head
    # as computed, unrounded: near 0 and 1 its stored 6 decimals tie rows the audit told apart).
    assert summary["probe_nll"] == {"plain": round(heads.plain_nll, 6),
                                    "corrected": round(heads.corrected_nll, 6)}
    joined = heads.corrected_nll < heads.plain_nll
    assert ("noise-corrected (mean rank)" in summary["ranked_by"]) == joined
    mean_rank = rank_mean(scores["late_suspicion"].to_numpy(), scores["probe_suspicion"].to_numpy(),
                          *([heads.corrected] if joined else []))
    along = scores.assign(mean_rank=mean_rank)[free].sort_values("rank")["mean_rank"].to_numpy()
    assert np.all(np.diff(along) <= 1.0 / len(scores) + 1e-9)  # late belief: 6 decimals, swaps of one


def test_on_fixed_features_the_members_train_the_head_and_the_cross_fitted_head_orders_with_an_exam(tmp_path):
    """Vectors are features the run does not train: ``train_on=auto`` resolves to every member
    even where an exam can choose, and the default order is the plain cross-fitted head alone
    (it already carries the late belief as its weights); the corrected head stays the exam's
    alternative, alone or with the plain head."""
    v = _blobs(tmp_path, n_wrong=180, n_verified=120)
    run = audit(RunConfig(dataset=str(v["manifest"]), trusted=str(v["trusted"]), features=str(v["emb"]),
                          out=str(tmp_path / "run"), epochs=3, report=False))
    s = run.summary
    assert s["estimates"]["exam_wrong"] >= 5  # the exam can choose
    summary = s["method_summary"]
    assert sorted(summary["trained_on"]) == ["ieg", "mlc", "mlnt", "mslg"]
    assert summary["trained_on_because"].startswith("the features are fixed")
    assert summary["ranked_by"] == ("a cross-fitted head weighted by the late-phase belief (the "
                                    "noise-corrected head is the exam's alternative)")
    choice = s["ranking_choice"]
    assert set(choice["exam_auroc"]) == {"default", "corrected head", "plain and corrected heads"}
    assert choice["chosen"] == "default"
    scores, free, _wrong_rows = _wrong(run, v)
    along = scores[free].sort_values("rank")["probe_suspicion"].to_numpy()
    assert np.all(np.diff(along) <= 1e-6)  # stored to 6 decimals


def test_npy_in_manifest_order_gives_the_same_scores_as_parquet_with_ids(vec):
    a = audit(RunConfig(dataset=str(vec["manifest"]), trusted=str(vec["trusted"]),
                        features=str(vec["emb"]), out=str(vec["tmp"] / "a"), epochs=3, report=False))
    b = audit(RunConfig(dataset=str(vec["manifest"]), trusted=str(vec["trusted"]),
                        features=str(vec["npy"]), out=str(vec["tmp"] / "b"), epochs=3, report=False))
    assert np.array_equal(a.scores["suspicion"], b.scores["suspicion"])


def test_pred_probs_are_scored_without_training(vec, cli):
    rng = np.random.default_rng(1)
    logits = 4.0 * np.eye(len(CLASSES))[vec["true"]] + rng.normal(0, 1, (len(vec["true"]), len(CLASSES)))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    frame = pd.DataFrame(probs, columns=CLASSES)
    frame.insert(0, "id", vec["ids"])
    frame = frame[["id", "doe", "cow", "bee", "ant"]]  # columns found by class name, any order
    path = vec["tmp"] / "probs.csv"
    frame.to_csv(path, index=False)
    code, out, err = cli("audit", vec["manifest"], "--trusted", vec["trusted"], "--pred-probs", path,
                         "--out", vec["tmp"] / "pp", "--format", "json", "--quiet")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["input"] == "pred-probs" and summary["epochs"] == 0
    assert not (vec["tmp"] / "pp" / "checkpoint.pt").exists()
    scores = pd.read_csv(vec["tmp"] / "pp" / "scores.csv").set_index("sample_id").loc[vec["ids"]]
    free = ~scores["verified"].to_numpy()
    wrong = vec["given"] != vec["true"]
    expected = 1 - probs[np.arange(len(probs)), vec["given"]]
    assert np.allclose(scores["pred_probs_suspicion"].to_numpy()[free], expected[free], atol=1e-5)
    assert auroc(scores["suspicion"].to_numpy()[free], wrong[free]) > 0.95
    assert summary["estimates"]["exam_rows"] >= 20 and summary["estimates"]["noise_rate"]["k"] > 0


@pytest.mark.parametrize("case, message", [
    ("missing_row", "1 sample(s) have no row (first: id 's0599')"),
    ("nan", "hold NaN or infinite values"),
    ("ragged", "vectors differ in length"),
    ("short_npy", "599 rows, expected 600"),
])
def test_bad_features_are_one_line_errors(vec, cli, case, message):
    x = vec["x"].copy()
    if case == "missing_row":
        path = vec["tmp"] / "bad.parquet"
        pd.DataFrame({"id": vec["ids"][:-1], "embedding": list(x[:-1])}).to_parquet(path)
    elif case == "nan":
        x[5, 3] = np.nan
        path = vec["tmp"] / "bad.npy"
        np.save(path, x)
    elif case == "ragged":
        path = vec["tmp"] / "bad.parquet"
        rows = [list(r) for r in x]
        rows[7] = rows[7][:-1]
        pd.DataFrame({"id": vec["ids"], "embedding": rows}).to_parquet(path)
    else:
        path = vec["tmp"] / "bad.npy"
        np.save(path, x[:-1])
    code, _out, err = cli("audit", vec["manifest"], "--features", path, "--out", vec["tmp"] / "r")
    assert code == 1 and message in err and "Traceback" not in err
    errors = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0]  # stage lines, one error
    assert not (vec["tmp"] / "r" / "config.json").exists()


def test_pred_probs_that_are_not_probabilities_are_refused(vec):
    frame = pd.DataFrame(np.full((len(vec["ids"]), len(CLASSES)), 0.5), columns=CLASSES)
    frame.insert(0, "id", vec["ids"])
    frame.to_csv(vec["tmp"] / "p.csv", index=False)
    with pytest.raises(DataError, match=r"sums to 2\); expected non-negative values summing to 1"):
        audit(RunConfig(dataset=str(vec["manifest"]), pred_probs=str(vec["tmp"] / "p.csv"),
                        out=str(vec["tmp"] / "r")))
    frame = frame.drop(columns=["cow"])
    frame.to_csv(vec["tmp"] / "p.csv", index=False)
    with pytest.raises(DataError, match="no column for class"):
        audit(RunConfig(dataset=str(vec["manifest"]), pred_probs=str(vec["tmp"] / "p.csv"),
                        out=str(vec["tmp"] / "r")))


def test_a_manifest_without_paths_needs_ids_for_images_but_not_for_features(vec, tmp_path):
    frame = pd.read_csv(vec["manifest"]).drop(columns=["id"])
    frame.to_csv(tmp_path / "noid.csv", index=False)
    with pytest.raises(DataError, match="expected an id column"):
        audit(RunConfig(dataset=str(tmp_path / "noid.csv"), features=str(vec["emb"]), out=str(tmp_path / "r")))
    with pytest.raises(DataError, match="expected column\\(s\\) 'path'"):
        audit(RunConfig(dataset=str(vec["manifest"]), out=str(tmp_path / "r")))


def test_ivf_neighbours_above_the_exact_size_agree_with_exact_search():
    from labelclean.knn import FaissKnn

    rng = np.random.default_rng(0)
    x = (rng.normal(0, 4, (20, 8))[rng.integers(0, 20, 3000)] + rng.normal(0, 1, (3000, 8))).astype(np.float32)
    exact = FaissKnn().fit(x).kneighbors(10)
    ivf = FaissKnn(exact_max=1000).fit(x)
    assert type(ivf.index).__name__ == "IndexIVFFlat"
    approx = ivf.kneighbors(10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall > 0.9 and (approx != np.arange(3000)[:, None]).all()


def test_wide_vectors_above_the_exact_budget_are_projected_before_the_ivf_index(monkeypatch):
    from labelclean import knn

    rng = np.random.default_rng(1)
    centres = rng.normal(0, 4, (30, 96))
    x = (centres[rng.integers(0, 30, 2000)] + rng.normal(0, 1, (2000, 96))).astype(np.float32)
    exact = knn.FaissKnn().fit(x).kneighbors(10)
    monkeypatch.setattr(knn, "EXACT_BUDGET", 1e6)  # 2,000² · 96 is above it
    monkeypatch.setattr(knn, "IVF_DIM", 16)
    approx_index = knn.FaissKnn().fit(x)
    assert type(approx_index.index).__name__ == "IndexIVFFlat" and approx_index.x.shape == (2000, 16)
    approx = approx_index.kneighbors(10)
    # Same-cluster neighbours: the projection keeps the structure that matters to MLNT.
    labels = np.argmin(((x[:, None, :] - centres[None].astype(np.float32)) ** 2).sum(-1), 1)
    assert (labels[approx] == labels[:, None]).mean() > 0.95
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall > 0.3 and (approx != np.arange(2000)[:, None]).all()


@pytest.mark.parametrize("layout", ["float32", "float64", "fortran", "v2"])
def test_npy_rows_are_read_by_chunks_as_the_map_would_give_them(tmp_path, monkeypatch, layout):
    from labelclean.data import vectors

    rng = np.random.default_rng(3)
    values = rng.normal(size=(23, 5))
    path = tmp_path / "x.npy"
    if layout == "fortran":
        np.save(path, np.asfortranarray(values))
    elif layout == "v2":
        with open(path, "wb") as f:
            np.lib.format.write_array(f, values.astype(np.float32), version=(2, 0))
    else:
        np.save(path, values.astype(layout))
    monkeypatch.setattr(vectors, "CHUNK_ROWS", 4)  # several chunks and a ragged last one
    array = np.load(path, mmap_mode="r")
    for rows in (np.arange(23), rng.permutation(23)[:17], np.array([5, 5, 2])):
        got = vectors._npy_rows(path, array, rows)
        assert got.dtype == np.float32
        assert np.array_equal(got, np.asarray(array[rows], dtype=np.float32)), (layout, rows)


def test_pred_probs_come_back_float32_and_normalised_by_chunks(vec, tmp_path, monkeypatch):
    from labelclean.data import vectors
    from labelclean.data.dataset import load_samples

    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=600) * 1.0004  # sums 1.0004: within tolerance
    np.save(tmp_path / "p.npy", probs)
    monkeypatch.setattr(vectors, "CHUNK_ROWS", 7)
    samples = load_samples(vec["manifest"], vec["trusted"], require_path=False)
    got = vectors.read_pred_probs(tmp_path / "p.npy", samples)
    assert got.dtype == np.float32
    assert np.allclose(got.sum(1), 1.0, atol=1e-6)
    rows = samples.table["row"].to_numpy()
    assert np.allclose(got, probs[rows] / probs[rows].sum(1, keepdims=True), atol=1e-6)
