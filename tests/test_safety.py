"""The data-safety pass: nothing lost, nothing silently wrong (each test failed before its fix)."""

from __future__ import annotations

import json
import os
import stat

import pandas as pd
import pytest

from labelclean import RunConfig, audit
from labelclean.errors import ConfigError, DataError
from labelclean.export.decisions import import_decisions, load_decisions
from labelclean.export.manifest import export_labels
from tests.conftest import FAST


def _folder_config(root, trusted, out, **kw):
    base = {"dataset": str(root), "trusted": str(trusted), "out": str(out), "method": "ce",
            "backbone": "test_tiny", "epochs": 2, "batch_size": 12, "lr": 0.1, "image_size": 12,
            "report": False}
    return RunConfig(**{**base, **kw})


@pytest.mark.parametrize("spelling", ["symlink", "absolute"])
def test_trusted_rows_find_their_sample_whatever_the_path_spelling(tiny, tmp_path, spelling):
    root = tiny.root
    if spelling == "symlink":
        root = tmp_path / "link"
        os.symlink(tiny.root, root)
    else:
        trusted = pd.read_csv(tiny.trusted)
        trusted["path"] = [str((tiny.trusted.parent / p).resolve()) for p in trusted["path"]]
        trusted.to_csv(tmp_path / "abs.csv", index=False)
    result = audit(_folder_config(root, tiny.trusted if spelling == "symlink" else tmp_path / "abs.csv",
                                  tmp_path / "run"))
    scores = result.scores
    assert not scores["sample_id"].str.startswith("trusted:").any()
    assert scores["verified"].sum() == 6 and len(scores) == len(tiny.truth)


def test_overwrite_leaves_only_the_new_run(tiny, tmp_path):
    out = tmp_path / "run"
    audit(RunConfig(dataset=str(tiny.parquet), trusted=str(tiny.trusted), out=str(out), method="ce",
                    backbone="test_tiny", epochs=2, batch_size=12, image_size=12, report=False))
    assert (out / "corrected.parquet").exists()
    (out / "labels-relabel.csv").write_text("stale")
    audit(RunConfig(dataset=str(tiny.csv), trusted=str(tiny.trusted), out=str(out), method="ce",
                    backbone="test_tiny", epochs=2, batch_size=12, image_size=12, report=False,
                    overwrite=True))
    assert not (out / "corrected.parquet").exists() and not (out / "labels-relabel.csv").exists()
    written, _, _ = export_labels(out)
    assert written.suffix == ".csv" and "id" in pd.read_csv(written).columns


def test_the_unreviewed_tasks_file_holds_no_decisions(tiny, tmp_path):
    result = audit(_folder_config(tiny.root, tiny.trusted, tmp_path / "run", epochs=4))
    tasks, n, _ = export_labels(result.run_dir, "label-studio")
    assert n > 0
    assert import_decisions(result.run_dir, tasks) == 0
    assert load_decisions(result.run_dir).empty


def test_promote_trusted_keeps_every_row_column_and_the_file_mode(tiny, tmp_path):
    result = audit(_folder_config(tiny.root, tiny.trusted, tmp_path / "run", epochs=4))
    run = result.run_dir
    suspect = result.scores[result.scores["is_suspect"]].iloc[0]
    pd.DataFrame({"sample_id": [suspect["sample_id"]], "decision": ["relabel"], "label": ["fox"]}
                 ).to_csv(tmp_path / "d.csv", index=False)
    import_decisions(run, tmp_path / "d.csv")
    team = tmp_path / "team.csv"
    old = pd.read_csv(tiny.trusted).assign(verified_by="ana", id=range(6))
    old.to_csv(team, index=False)
    os.chmod(team, 0o640)
    export_labels(run, decisions=True, promote_trusted=team)
    new = pd.read_csv(team)
    assert list(new.columns[:4]) == list(old.columns) and len(new) == len(old) + 1
    assert (new["verified_by"].iloc[:6] == "ana").all() and new["label"].iloc[-1] == "fox"
    assert stat.S_IMODE(team.stat().st_mode) == 0o640


def test_resume_refuses_changed_labels(tiny, tmp_path, monkeypatch):
    from labelclean.methods.ce import CrossEntropy

    cfg = _folder_config(tiny.root, tiny.trusted, tmp_path / "run", epochs=3)
    original = CrossEntropy.on_epoch_start

    def crash(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        original(self, epoch)

    with monkeypatch.context() as m:
        m.setattr(CrossEntropy, "on_epoch_start", crash)
        with pytest.raises(KeyboardInterrupt):
            audit(cfg)
    trusted = pd.read_csv(tiny.trusted)
    trusted.loc[0, "label"] = "fox" if trusted.loc[0, "label"] != "fox" else "cat"
    trusted.to_csv(tiny.trusted, index=False)
    with pytest.raises(ConfigError, match="labels, the trusted set or the samples changed"):
        audit(cfg.replace(resume=True))


def test_out_never_overwrites_inputs_or_run_files(tiny, tmp_path, cli):
    run = tmp_path / "run"
    assert cli("audit", tiny.csv, "--trusted", tiny.trusted, "--out", run, *FAST)[0] == 0
    before = tiny.trusted.read_bytes()
    code, _, err = cli("report", run, "--out", tiny.trusted)
    assert code == 1 and "is an input or a file of the run" in err and tiny.trusted.read_bytes() == before
    scores = (run / "scores.csv").read_bytes()
    code, _, err = cli("export", run, "--out", run / "scores.csv")
    assert code == 1 and (run / "scores.csv").read_bytes() == scores
    (tmp_path / "theirs.csv").write_text("someone's file")
    code, _, err = cli("export", run, "--out", tmp_path / "theirs.csv")
    assert code == 1 and "--overwrite" in err and (tmp_path / "theirs.csv").read_text() == "someone's file"
    assert cli("export", run, "--out", tmp_path / "theirs.csv", "--overwrite")[0] == 0


def test_a_failed_run_can_be_rerun_into_the_same_out(tiny, tmp_path):
    for name in ("s003", "s004", "s005", "s006"):  # 4 of 48 unreadable: more than 5%
        next(tiny.root.rglob(f"{name}.png")).write_bytes(b"broken")
    cfg = _folder_config(tiny.root, tiny.trusted, tmp_path / "run")
    with pytest.raises(DataError, match="unreadable"):
        audit(cfg)
    assert not (tmp_path / "run" / "config.json").exists()
    assert not list((tmp_path / "run").glob(".*.tmp"))
    with pytest.raises(DataError, match="unreadable"):  # the same error, not "holds an earlier run"
        audit(cfg)


def test_outputs_follow_the_umask(tiny, tmp_path):
    old = os.umask(0o022)
    try:
        result = audit(_folder_config(tiny.root, tiny.trusted, tmp_path / "run", report=True))
    finally:
        os.umask(old)
    for name in ("scores.csv", "summary.json", "report.html", "checkpoint.pt", "corrected.csv"):
        assert stat.S_IMODE((result.run_dir / name).stat().st_mode) == 0o644, name


def test_out_inside_an_image_folder_is_refused(tiny):
    with pytest.raises(ConfigError, match="inside the image folder"):
        audit(_folder_config(tiny.root, tiny.trusted, tiny.root / "runs" / "r1"))
    assert not (tiny.root / "runs").exists()


def test_labels_that_look_like_rich_markup_print_as_text(tmp_path, cli):
    from PIL import Image

    rows = []
    for k, label in enumerate(["[bold]", "[/x]"]):
        for i in range(12):
            path = tmp_path / "img" / f"{k}_{i}.png"
            path.parent.mkdir(exist_ok=True)
            Image.new("RGB", (8, 8), (200 * k, 50, 50)).save(path)
            rows.append({"path": str(path), "label": label})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    code, out, err = cli("audit", tmp_path / "m.csv", "--out", tmp_path / "run", "--top", "5", *FAST)
    assert code == 0, err
    code, out, err = cli("review", tmp_path / "run", "--all", "--top", "3")
    assert code == 0, err
    assert "[/x]" in out or "[bold]" in out
    code, out, err = cli("review", tmp_path / "run", "--format", "json", "--all", "--top", "1")
    assert code == 0 and "\\/" not in out and json.loads(out)[0]["given_label"] in ("[bold]", "[/x]")


@pytest.mark.parametrize("n", [2, 3, 10])
def test_tiny_datasets_audit_with_the_default_method(tmp_path, n):
    from PIL import Image

    for i in range(n):
        path = tmp_path / "ds" / "ab"[i % 2] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (30 + 20 * i, 90, 90)).save(path)
    result = audit(RunConfig(dataset=str(tmp_path / "ds"), out=str(tmp_path / "run"),
                             backbone="test_tiny", epochs=3, image_size=8, report=False))
    assert len(result.scores) == n and result.scores["p_wrong"].notna().all()


def test_a_fully_verified_dataset_audits_and_applies_the_verified_labels(tiny, tmp_path):
    truth = tiny.truth
    full = tmp_path / "all.csv"
    pd.DataFrame({"path": [str(tiny.csv.parent / p) for p in truth["path"]],
                  "label": truth["true"]}).to_csv(full, index=False)
    result = audit(RunConfig(dataset=str(tiny.csv), trusted=str(full), out=str(tmp_path / "run"),
                             backbone="test_tiny", epochs=3, batch_size=12, image_size=12,
                             report=False))
    assert result.scores["verified"].all()
    corrected = pd.read_csv(result.run_dir / "corrected.csv")
    wrong = corrected["label"] != truth["true"]
    assert wrong.sum() == len(tiny.flipped)
    assert (corrected.loc[wrong, "suggested_label"] == truth.loc[wrong, "true"]).all()
    assert (corrected["action"] == "verified").all()
    written, changed, _ = export_labels(result.run_dir)
    assert changed == len(tiny.flipped)
    assert (pd.read_csv(written)["label"] == truth["true"]).all()


def _two_class_folder(root, n=6, size=(8, 8)):
    from PIL import Image

    for k, c in enumerate("ab"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", size, (200 * k, 40 + i, 60)).save(root / c / f"{i}.png")
    return root


def test_a_file_name_that_is_not_utf8_is_refused_by_name(tmp_path):
    from labelclean.data import load_samples

    root = _two_class_folder(tmp_path / "ds")
    os.rename(root / "a" / "1.png", os.fsencode(root / "a") + b"/caf\xe9.png")
    with pytest.raises(DataError, match=r"caf\\xe9\.png: file name is not valid UTF-8"):
        load_samples(root)


def test_symlinked_folders_are_followed_and_broken_links_noted(tmp_path):
    from labelclean.data import load_samples

    root = _two_class_folder(tmp_path / "ds")
    extra = _two_class_folder(tmp_path / "elsewhere", n=3)
    os.symlink(extra / "b", root / "b" / "more")
    os.symlink(tmp_path / "missing.png", root / "a" / "gone.png")
    os.symlink(root / "a", root / "a" / "loop")
    samples = load_samples(root)
    labels = samples.table["label"].value_counts()
    assert labels["a"] == 6 and labels["b"] == 9
    notes = " ".join(samples.notes)
    assert "1 broken symbolic link" in notes and "followed 1 symlinked folder" in notes
    assert "reached twice" in notes


def test_parquet_labels_that_are_lists_are_refused_and_bytes_read_as_text(tmp_path):
    from labelclean.data import load_samples

    root = _two_class_folder(tmp_path / "ds")
    frame = pd.DataFrame({"path": [f"ds/{c}/{i}.png" for c in "ab" for i in range(6)],
                          "label": [c for c in "ab" for _ in range(6)]})
    listed = frame.assign(label=[[v] for v in frame["label"]])
    listed.to_parquet(tmp_path / "list.parquet")
    with pytest.raises(DataError, match=r"12 label\(s\) are lists \(row 1: \['a'\]\)"):
        load_samples(tmp_path / "list.parquet")
    frame.assign(label=[v.encode() for v in frame["label"]]).to_parquet(tmp_path / "b.parquet")
    assert load_samples(tmp_path / "b.parquet").classes == ["a", "b"]
    bad = frame.assign(label=[v.encode() for v in frame["label"]])
    bad.loc[3, "label"] = b"\xff"
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"row 4: label b'\\xff' is bytes that are not UTF-8"):
        load_samples(tmp_path / "bad.parquet")
    assert root.exists()


def test_float_images_in_zero_to_one_are_not_black(tmp_path):
    import numpy as np
    from PIL import Image

    from labelclean.data import load_image

    Image.fromarray(np.full((8, 8), 0.8, dtype=np.float32), "F").save(tmp_path / "f.tif")
    assert abs(int(load_image(str(tmp_path / "f.tif"), 8).mean()) - 204) <= 1


def test_images_above_the_pixel_limit_are_skipped_naming_the_flag(tmp_path, monkeypatch):
    import warnings

    from PIL import Image

    from labelclean.data import images

    root = _two_class_folder(tmp_path / "ds", n=30)
    Image.new("RGB", (40, 40)).save(root / "a" / "big.png")
    config = RunConfig(dataset=str(root), out=str(tmp_path / "run"), method="ce",
                       backbone="test_tiny", epochs=1, image_size=8, report=False,
                       max_image_pixels=1000)
    result = audit(config)
    skipped = pd.read_csv(result.run_dir / "skipped.csv")
    assert skipped["reason"].str.contains("40 x 40 = 1,600 pixels.*--max-image-pixels 1600").all()
    monkeypatch.setattr(images, "LARGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's raw DecompressionBombWarning must not appear
        decoded = images.decode_images([str(root / "a" / "big.png")], 8, max_pixels=0)
    assert decoded.large == 1 and not decoded.failures
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's own guard is back afterwards


def test_a_pixel_cache_larger_than_its_disk_or_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from labelclean.data import images

    root = _two_class_folder(tmp_path / "ds")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**6, 10**6 - 10_000, 10_000))
    config = RunConfig(dataset=str(root), out=str(tmp_path / "run"), method="ce",
                       backbone="test_tiny", epochs=1, image_size=64, report=False)
    with pytest.raises(DataError, match=r"--image-size 64: 12 images need .* GiB are free; set "
                                        r"LABELCLEAN_CACHE"):
        audit(config)
    assert not (tmp_path / "run" / "config.json").exists()
    # Where the cache folder cannot be written, the pixels go to memory, whose limit applies.
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("LABELCLEAN_CACHE", str(tmp_path / "not-a-folder"))
    monkeypatch.setattr(images, "available_memory", lambda: 10_000)
    with pytest.raises(DataError, match=r"--image-size 64: 12 images need .* choose a smaller"):
        audit(config)
    assert not (tmp_path / "run" / "config.json").exists()


def test_an_unwritable_out_is_one_line(tiny, tmp_path, cli, monkeypatch):
    import errno as errno_module

    from labelclean import io

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(errno_module.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(io.tempfile, "mkstemp", refuse)
    code, _out, err = cli("audit", tiny.root, "--out", tmp_path / "locked" / "run", *FAST)
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'locked' / 'run'}: cannot write: Permission denied (choose another "
        "--out, or free or unlock that folder)")


def test_ctrl_c_says_interrupted_exits_130_and_the_run_resumes(tiny, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = [sys.executable, "-m", "labelclean.cli", "audit", str(tiny.root), "--trusted",
            str(tiny.trusted), "--out", str(out), "--method", "ce", "--backbone", "test_tiny",
            "--epochs", "150", "--batch-size", "12", "--image-size", "12", "--no-report"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    deadline, seen = time.monotonic() + 180, ""  # a loaded machine or a CUDA start is slow
    while time.monotonic() < deadline and (line := proc.stderr.readline()):
        seen += line
        if "epoch 2/" in line:
            break
    assert "epoch 2/" in seen, f"the audit never reached epoch 2 (so no checkpoint yet): {seen}"
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(30) == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert (out / "checkpoint.pt").exists() and not list(out.glob(".*.tmp"))
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stderr


def test_simulate_refuses_a_trusted_share_that_leaves_a_class_empty(tiny, tmp_path, cli):
    code, _out, err = cli("simulate", tiny.root, "--noise", "uniform", "--rate", "0.2",
                         "--trusted-per-class", "100", "--out", tmp_path / "sim")
    assert code == 1 and "class 'dog' has only 15 samples" in err and "at most 14" in err
    assert not (tmp_path / "sim").exists()


def test_a_jsonl_export_audits_again(tiny, tmp_path, cli):
    code, _, err = cli("audit", tiny.csv, "--trusted", tiny.trusted, "--out", tmp_path / "r1", *FAST)
    assert code == 0, err
    code, out, err = cli("export", tmp_path / "r1", "--format", "jsonl", "--out", tmp_path / "x.jsonl")
    assert code == 0, err
    code, _, err = cli("audit", tmp_path / "x.jsonl", "--trusted", tiny.trusted, "--out",
                       tmp_path / "r2", *FAST)
    assert code == 0, err
    run = json.loads((tmp_path / "r2" / "summary.json").read_text())
    assert run["input_kind"] == "jsonl" and (tmp_path / "r2" / "corrected.jsonl").exists()
    code, out, err = cli("export", tmp_path / "r2")
    assert code == 0 and out.strip().endswith(".jsonl")


def test_label_studio_layout_for_images_in_two_trees():
    from pathlib import Path

    from labelclean.export.label_studio import storage_layout

    one = storage_layout(["/data/set/a/1.png", "/data/set/b/2.png"])
    assert one.document_root == Path("/data") and one.storages == (Path("/data/set"),)
    two = storage_layout(["/data/set/a/1.png", "/mnt/x/b/2.png", "/mnt/x/c/3.png"])
    assert two.document_root == Path("/")
    assert two.storages == (Path("/data/set/a"), Path("/mnt/x"))
    assert two.reference(Path("/mnt/x/b/2.png")) == "/data/local-files/?d=mnt/x/b/2.png"
    with pytest.raises(DataError, match="directly in /"):
        storage_layout(["/1.png", "/mnt/x/2.png"])
