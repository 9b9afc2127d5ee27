import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from labelclean import RunConfig, audit
from labelclean.errors import ConfigError, DataError
from labelclean.methods.ce import CrossEntropy
from tests.conftest import FAST, tree_digest


def _config(tiny, tmp_path, **kw):
    base = {"dataset": str(tiny.csv), "trusted": str(tiny.trusted), "out": str(tmp_path / "run"),
                "method": "ce", "backbone": "test_tiny", "epochs": 4, "batch_size": 12, "lr": 0.1, "image_size": 12}
    return RunConfig(**{**base, **kw})


def test_flipped_samples_rank_above_clean_ones(tiny, tmp_path):
    result = audit(_config(tiny, tmp_path, epochs=6))
    s = result.scores[~result.scores["verified"]]
    flipped = s["sample_id"].isin(tiny.flipped)
    assert s.loc[flipped, "suspicion"].min() > s.loc[~flipped, "suspicion"].quantile(0.9)
    top = s.sort_values("rank").head(len(tiny.flipped))
    assert top["sample_id"].isin(tiny.flipped).sum() >= len(tiny.flipped) - 1
    truth = tiny.truth.set_index("id")["true"]
    fixed = s.loc[flipped]
    assert (fixed["suggested_label"] == truth[fixed["sample_id"]].to_numpy()).all()


def test_same_seed_same_scores_and_other_seed_differs(tiny, tmp_path):
    a = audit(_config(tiny, tmp_path, out=str(tmp_path / "a"))).scores
    b = audit(_config(tiny, tmp_path, out=str(tmp_path / "b"))).scores
    c = audit(_config(tiny, tmp_path, out=str(tmp_path / "c"), seed=1)).scores
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["suspicion"], c["suspicion"])


def test_resume_after_interruption_matches_uninterrupted_run(tiny, tmp_path, monkeypatch):
    full = audit(_config(tiny, tmp_path, out=str(tmp_path / "full"))).scores

    original = CrossEntropy.on_epoch_start

    def crash(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        original(self, epoch)

    monkeypatch.setattr(CrossEntropy, "on_epoch_start", crash)
    with pytest.raises(KeyboardInterrupt):
        audit(_config(tiny, tmp_path, out=str(tmp_path / "cut")))
    monkeypatch.setattr(CrossEntropy, "on_epoch_start", original)
    resumed = audit(_config(tiny, tmp_path, out=str(tmp_path / "cut"), resume=True))
    assert resumed.summary["resumed_from_epoch"] == 2
    pd.testing.assert_frame_equal(full, resumed.scores)


def test_resume_with_other_settings_is_refused(tiny, tmp_path):
    audit(_config(tiny, tmp_path, epochs=1))
    with pytest.raises(ConfigError, match="different settings"):
        audit(_config(tiny, tmp_path, epochs=1, lr=0.2, resume=True))


def test_resume_from_a_checkpoint_of_another_version_is_refused_in_one_line(tiny, tmp_path):
    import torch
    audit(_config(tiny, tmp_path, epochs=1))
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    late = state["method"]["dynamics"]["late"]
    late["values"] = torch.zeros(len(late["count"]), 2)  # an older layout: a dense (N, C) table
    torch.save(state, path)
    with pytest.raises(ConfigError, match="does not fit this version of labelclean"):
        audit(_config(tiny, tmp_path, epochs=1, resume=True))


def test_outputs_keep_every_row_and_column_and_inputs_are_untouched(tiny, tmp_path):
    Image.new("RGB", (3, 3)).save(tiny.root / "cat" / "s000.png")  # still fine
    (tiny.root / "dog" / "s020.png").write_bytes(b"broken")  # one corrupt image of 48
    before = tree_digest(tiny.root.parent)
    result = audit(_config(tiny, tmp_path))
    assert tree_digest(tiny.root.parent) == before
    run = result.run_dir
    corrected = pd.read_csv(run / "corrected.csv", dtype=str, keep_default_na=False)
    original = pd.read_csv(tiny.csv, dtype=str, keep_default_na=False)
    assert len(corrected) == len(original)
    for column in original.columns.drop("path"):
        assert (corrected[column] == original[column]).all()
    assert corrected.loc[corrected["id"] == "s020", "action"].item() == "skipped"
    assert (run / corrected["path"].iloc[0]).resolve() == (tiny.csv.parent / original["path"].iloc[0]).resolve()
    skipped = pd.read_csv(run / "skipped.csv")
    assert skipped["sample_id"].tolist() == ["s020"] and skipped["row"].tolist() == [21]
    scores = pd.read_parquet(run / "scores.parquet")
    assert list(scores.columns[:13]) == ["sample_id", "path", "image_path", "source", "given_label",
                                         "suggested_label", "predicted_label", "suspicion", "p_wrong",
                                         "is_suspect", "rank", "action", "verified"]
    assert "ce_suspicion" in scores.columns
    assert scores["suspicion"].between(0, 1).all()
    assert not scores.loc[scores["verified"], "is_suspect"].any()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped"] == 1 and summary["verified"] == 6
    assert 0 < summary["threshold"] <= 1 and summary["threshold_method"] in ("mixture: estimated count, F1-optimal cut", "mixture (no separation: nothing flagged)")
    assert summary["flagged"] == int(scores["is_suspect"].sum())
    assert RunConfig.load(run / "config.json").epochs == 4
    t = pd.read_csv(run / "transition_matrix.csv", index_col=0)
    assert np.allclose(t.sum(1), 1.0)


def test_parquet_input_gives_parquet_corrected_manifest(tiny, tmp_path):
    result = audit(_config(tiny, tmp_path, dataset=str(tiny.parquet), epochs=1))
    corrected = pd.read_parquet(result.run_dir / "corrected.parquet")
    assert corrected["score"].dtype == np.float64
    assert list(corrected.columns[:5]) == ["id", "path", "label", "note", "score"]


def test_strict_makes_one_bad_image_an_error_and_many_always_are(tiny, tmp_path):
    (tiny.root / "dog" / "s020.png").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"s020.png \(manifest.csv row 21\): not a readable image"):
        audit(_config(tiny, tmp_path, strict=True))
    for name in ("s021", "s022", "s023"):
        (tiny.root / "dog" / f"{name}.png").unlink()
    with pytest.raises(DataError, match="4 of 48 images unreadable"):
        audit(_config(tiny, tmp_path, out=str(tmp_path / "r2")))


def test_cli_audit_review_export_round_trip(tiny, tmp_path, cli):
    run = tmp_path / "run"
    code, out, err = cli("audit", tiny.root, "--trusted", tiny.trusted, "--out", run, *FAST)
    assert code == 0, err
    assert "flagged" in out and "top" in out
    code, out, _ = cli("review", run, "--format", "json", "--all", "--top", "5")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 5
    assert [r["suspicion"] for r in rows] == sorted((r["suspicion"] for r in rows), reverse=True)
    code, out, _ = cli("review", run, "--class", "cat", "--all", "--format", "json", "--top", "0")
    assert {r["given_label"] for r in json.loads(out)} == {"cat"}

    code, out, err = cli("export", run, "--policy", "relabel", "--format", "parquet", "--out", tmp_path / "fixed.parquet")
    assert code == 0, err
    fixed = pd.read_parquet(tmp_path / "fixed.parquet")
    assert list(fixed.columns) == ["path", "label"]
    corrected = pd.read_csv(run / "corrected.csv", dtype=str)
    relabel = corrected["action"] == "relabel"
    assert (fixed.loc[relabel.to_numpy(), "label"].to_numpy() == corrected.loc[relabel, "suggested_label"].to_numpy()).all()
    assert (fixed.loc[~relabel.to_numpy() & (corrected["action"] != "verified").to_numpy(), "label"].to_numpy()
            == corrected.loc[~relabel & (corrected["action"] != "verified"), "label"].to_numpy()).all()
    # The export can be audited again as it is.
    code, _, err = cli("audit", tmp_path / "fixed.parquet", "--out", tmp_path / "again", *FAST)
    assert code == 0, err

    code, _, _ = cli("export", run, "--policy", "drop", "--format", "jsonl", "--out", tmp_path / "kept.jsonl")
    kept = pd.read_json(tmp_path / "kept.jsonl", lines=True)
    assert len(kept) == len(corrected) - (corrected["is_suspect"] == "True").sum()
    code, _, _ = cli("export", run, "--policy", "flag", "--threshold", "0.5", "--out", tmp_path / "flag.csv")
    assert "suspicion" in pd.read_csv(tmp_path / "flag.csv").columns


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["audit", "{tmp}/missing"], 1, "dataset not found"),
        (["audit", "{csv}", "--method", "nope"], 2, "'nope' is not one of"),
        (["audit", "{csv}", "--image-size", "2"], 1, "--image-size: expected 8 to 1024, found 2"),
        (["audit", "{csv}", "--method", "mlc", "--option", "mode=bogus"], 2,
         "--option mlc.mode: expected one of persistent, reset, found 'bogus'"),
        (["audit", "{csv}", "--option", "members=mlc,foo"], 2, "--option auto.members: expected some of"),
        (["audit", "{csv}", "--option", "mlc.nope=1"], 2, "--option mlc: unknown option 'nope'"),
        (["audit", "{csv}", "--option", "foo.mode=1"], 2, "'foo' is not a member of auto"),
        (["audit", "{csv}", "--method", "ieg", "--option", "eta=fast"], 2, "--option ieg.eta: expected a number"),
        (["audit", "{csv}", "--label-column", "klass"], 1, "expected column(s) 'klass'"),
        (["audit", "{csv}", "--epochs", "many"], 2, "Invalid value"),
        (["audit"], 2, "Missing argument"),
        (["review", "{tmp}"], 1, "expected a finished audit run folder"),
        (["export", "{tmp}"], 1, "expected a finished audit run folder"),
        (["export", "{tmp}", "--policy", "burn"], 2, "'burn' is not one of"),
    ],
)
def test_cli_errors_are_one_line_with_exit_codes(tiny, tmp_path, cli, args, code, message):
    args = [a.format(tmp=tmp_path, csv=tiny.csv) for a in args]
    got, _out, err = cli(*args)
    assert got == code
    assert message in " ".join(err.replace("│", " ").split())
    assert "Traceback" not in err
    if code == 1 or "--option" in args:
        assert len(err.strip().splitlines()) == 1


def test_no_trusted_set_says_so_once(tiny, tmp_path, cli):
    code, _out, err = cli("audit", tiny.csv, "--out", tmp_path / "r", *FAST)
    assert code == 0
    assert err.count("no trusted set given") == 1
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["verified"] == 0 and "no trusted set" in summary["notes"][0]


def test_existing_run_folder_needs_resume_or_overwrite(tiny, tmp_path, cli):
    assert cli("audit", tiny.csv, "--out", tmp_path / "r", *FAST)[0] == 0
    code, _, err = cli("audit", tiny.csv, "--out", tmp_path / "r", *FAST)
    assert code == 1 and "holds an earlier run" in err
    assert cli("audit", tiny.csv, "--out", tmp_path / "r", "--overwrite", *FAST)[0] == 0


def test_a_csv_only_run_reads_back_with_the_schema_types(tiny, tmp_path):
    from labelclean.run.folder import Run

    result = audit(_config(tiny, tmp_path))
    run = Run.open(result.run_dir)
    with_parquet = run.suspects()
    (result.run_dir / "scores.parquet").unlink()
    scores = run.scores()
    assert scores["is_suspect"].dtype == bool and scores["verified"].dtype == bool
    assert str(scores["rank"].dtype) == "Int64" and scores["suspicion"].dtype == "float64"
    assert int(scores["is_suspect"].sum()) == result.summary["flagged"]  # "False" is not flagged
    pd.testing.assert_frame_equal(run.suspects(), with_parquet, check_dtype=False)
    assert (scores["image_path"].map(lambda p: Path(p).is_absolute())).all()


def test_off_a_terminal_each_stage_and_epoch_prints_one_plain_line(tiny, tmp_path, cli):
    code, _, err = cli("audit", tiny.csv, "--out", tmp_path / "r", *FAST)
    assert code == 0, err
    assert "decoding images: done in" in err and "epoch 4/4: loss" in err and "img/s" in err
    code, out, err = cli("audit", tiny.csv, "--out", tmp_path / "q", "--quiet", "--format", "json", *FAST)
    assert code == 0 and err == ""
    assert json.loads(out)["flagged"] >= 0 and "scores_schema_version" in json.loads(out)


def test_review_lists_suspects_in_rank_order_and_json_keeps_slashes(tiny, tmp_path, cli):
    assert cli("audit", tiny.root, "--trusted", tiny.trusted, "--out", tmp_path / "r", *FAST)[0] == 0
    code, out, _ = cli("review", tmp_path / "r", "--all", "--top", "0", "--format", "json")
    rows = json.loads(out)
    assert code == 0 and [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert "\\/" not in out and "/" in rows[0]["sample_id"]
    code, out, _ = cli("review", tmp_path / "r", "--sort", "bogus")
    assert code == 2 and "bogus" in _


def test_default_epochs_give_a_network_from_scratch_more_visits_than_a_pretrained_one():
    from labelclean.pipeline import fit_epochs, trains_from_scratch

    # 5,085 images (the held-out set's size): 30 epochs from scratch, 20 from pretrained weights.
    assert fit_epochs(5085) == 30
    assert fit_epochs(5085, from_scratch=False) == 20
    assert fit_epochs(10_000) == 16 and fit_epochs(10_000, from_scratch=False) == 10
    assert fit_epochs(200) == 30 and fit_epochs(2_000_000) == 10  # the bounds hold
    base = {"dataset": "d"}
    assert trains_from_scratch(RunConfig(**base))
    assert trains_from_scratch(RunConfig(**base, backbone="resnet18"))
    assert not trains_from_scratch(RunConfig(**base, backbone="resnet18", weights="w.pth"))
    assert not trains_from_scratch(RunConfig(**base, backbone="tv:resnet18", weights="imagenet"))
    assert not trains_from_scratch(RunConfig(**base, features="emb.npy"))


def test_resolved_config_takes_the_epochs_that_fit_how_the_network_starts():
    from labelclean.pipeline import resolve_config
    from labelclean.run import schema as S

    class Rows:  # what resolve_config reads of the samples
        table = pd.DataFrame({S.ABS_PATH: ["x.png"] * 5085})

        def __len__(self) -> int:
            return 5085

    scratch = RunConfig(dataset="d", image_size=32)
    assert resolve_config(scratch, Rows()).epochs == 30
    assert resolve_config(scratch.replace(weights="w.pth", backbone="resnet18"), Rows()).epochs == 20
    assert resolve_config(scratch.replace(epochs=7), Rows()).epochs == 7  # the user's wins
