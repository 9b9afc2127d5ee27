"""Interactive review, decisions, exports with decisions, and Label Studio files."""

import json

import pandas as pd
import pytest
from rich.console import Console

from labelclean import RunConfig, audit
from labelclean.errors import ConfigError, DataError
from labelclean.export.decisions import import_decisions, load_decisions
from labelclean.export.label_studio import label_studio_config
from labelclean.export.manifest import export_labels
from labelclean.review.interactive import ReviewSession, require_tty


@pytest.fixture
def run(tiny, tmp_path):
    result = audit(RunConfig(dataset=str(tiny.csv), trusted=str(tiny.trusted), out=str(tmp_path / "run"),
                             backbone="test_tiny", epochs=4, batch_size=12, lr=0.1, image_size=12,
                             threshold=0.3, report=False))
    assert result.summary["flagged"] >= 3
    return result


def _script(*keys):
    answers = iter(keys)
    return lambda prompt: next(answers)


def test_review_records_each_decision_and_resumes(run, tmp_path):
    session = ReviewSession(run.run_dir)
    first, second, third = (session.items.iloc[i] for i in range(3))
    other = next(c for c in session.classes if c not in (third["given_label"], third["suggested_label"]))
    with open(tmp_path / "screen.txt", "w") as screen:
        console = Console(file=screen, width=120)
        made = session.run_loop(_script("a", "k", "b", "k", "t", "wolf", "t", other, "q"), console,
                                show_preview=True)
    assert "▀" in (tmp_path / "screen.txt").read_text()  # the preview was drawn
    assert made == 4
    rows = pd.read_csv(run.run_dir / "decisions.csv", dtype=str)
    assert rows["decision"].tolist() == ["accept", "keep", "keep", "relabel"]
    assert rows["sample_id"].tolist() == [first["sample_id"], second["sample_id"], second["sample_id"], third["sample_id"]]
    assert rows["label"].iloc[0] == first["suggested_label"] and rows["label"].iloc[3] == other
    assert rows["decided_at"].str.contains("T").all()
    # A later review starts after the decided ones.
    again = ReviewSession(run.run_dir)
    assert len(again.items) == len(session.items) - 3
    assert again.items.iloc[0]["sample_id"] == session.items.iloc[3]["sample_id"]


def test_interactive_review_needs_a_terminal(run, cli):
    with pytest.raises(ConfigError, match="needs a terminal"):
        require_tty(False)
    code, _, err = cli("review", run.run_dir, "--interactive")
    assert code == 1 and "needs a terminal" in err


def test_export_with_decisions_writes_changes_and_promotes_trusted(run, tiny, tmp_path):
    session = ReviewSession(run.run_dir)
    keep_row = session.items.iloc[0]
    session.decide(keep_row, "keep", str(keep_row["given_label"]))
    dest, changed, _total = export_labels(run.run_dir, "csv", "relabel", None, tmp_path / "out.csv",
                                         decisions=True, promote_trusted=tmp_path / "t2.csv")
    out = pd.read_csv(dest, dtype=str)
    changes = pd.read_csv(run.run_dir / "changes.csv", dtype=str)
    ids = pd.read_csv(tiny.csv, dtype=str)["id"].tolist()
    i = ids.index(keep_row["sample_id"])
    assert out["label"].iloc[i] == keep_row["given_label"]  # the reviewer's word wins
    assert keep_row["sample_id"] not in set(changes["sample_id"])
    assert len(changes) == changed and set(changes["decided_by"]) <= {"model"}
    trusted = pd.read_csv(tmp_path / "t2.csv", dtype=str)
    assert trusted["label"].tolist() == [keep_row["given_label"]]
    assert (tmp_path / trusted["path"].iloc[0]).resolve().is_file()
    # The promoted file works as a trusted set for the next audit.
    again = audit(RunConfig(dataset=str(dest), trusted=str(tmp_path / "t2.csv"), out=str(tmp_path / "r2"),
                            backbone="test_tiny", epochs=1, batch_size=12, image_size=12, report=False))
    assert again.summary["verified"] == 1


def test_label_studio_round_trip_files(run, tmp_path):
    dest, n, _ = export_labels(run.run_dir, "label-studio", dest=tmp_path / "tasks.json")
    tasks = json.loads(dest.read_text())
    assert len(tasks) == n == run.summary["flagged"]
    t = tasks[0]
    assert t["data"]["image"].startswith("/data/local-files/?d=")
    assert t["annotations"][0]["result"][0]["value"]["choices"] == [t["data"]["given_label"]]
    assert t["predictions"][0]["score"] == pytest.approx(t["data"]["suspicion"])
    assert '<Choices name="choice" toName="image"' in label_studio_config(["a", "<b>"])
    assert "&lt;b&gt;" in label_studio_config(["a", "<b>"])
    # A reviewer changes the first task's answer in Label Studio; its export comes back.
    exported = []
    for k, task in enumerate(tasks[:2]):
        choice = task["data"]["suggested_label"] if k == 0 else task["data"]["given_label"]
        exported.append({**task, "annotations": [
            {"result": [{"type": "choices", "value": {"choices": [choice]}}], "completed_by": {"email": "r@x"},
             "updated_at": "2026-11-21T10:00:00Z"}]})
    (tmp_path / "export.json").write_text(json.dumps(exported))
    assert import_decisions(run.run_dir, tmp_path / "export.json") == 2
    decisions = load_decisions(run.run_dir).set_index("sample_id")
    assert decisions.loc[tasks[0]["data"]["sample_id"], "decision"] == "accept"
    assert decisions.loc[tasks[1]["data"]["sample_id"], "decision"] == "keep"
    assert decisions.loc[tasks[0]["data"]["sample_id"], "reviewer"] == "r@x"


def test_import_refuses_unknown_ids_and_labels(run, tmp_path):
    sid = run.scores["sample_id"].iloc[0]
    pd.DataFrame({"sample_id": ["nope", sid], "decision": ["keep", "relabel"], "label": ["cat", "wolf"]}).to_csv(
        tmp_path / "d.csv", index=False)
    with pytest.raises(DataError) as info:
        import_decisions(run.run_dir, tmp_path / "d.csv")
    assert "'nope' is not in the run" in str(info.value) and "'wolf' is not a class" in str(info.value)
    assert not (run.run_dir / "decisions.csv").exists()


def test_label_studio_export_skips_untouched_imported_annotations(tmp_path):
    from labelclean.export.label_studio import read_label_studio_export

    def ann(label, updated_by, when):
        return {"result": [{"type": "choices", "value": {"choices": [label]}}], "completed_by": 1,
                "updated_by": updated_by, "updated_at": when}

    data = {"sample_id": "s1", "given_label": "cat", "suggested_label": "dog"}
    tasks = [
        {"data": data, "annotations": [ann("cat", None, "2026-01-01")]},  # as imported: no decision
        {"data": {**data, "sample_id": "s2"}, "annotations": [ann("cat", None, "2026-01-01"),
                                                               ann("dog", 7, "2026-01-02")]},
        {"data": {**data, "sample_id": "s3"}, "annotations": [ann("cat", 7, "2026-01-02")]},  # kept on review
    ]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    got = read_label_studio_export(tmp_path / "export.json").set_index("sample_id")
    assert sorted(got.index) == ["s2", "s3"]
    assert got.loc["s2", "decision"] == "accept" and got.loc["s3", "decision"] == "keep"
    assert set(got["reviewer"]) == {"label-studio:7"}


def test_single_keys_without_enter_from_a_terminal(capsys):
    import os
    import pty

    from labelclean.review.interactive import read_key

    master, slave = pty.openpty()
    try:
        os.write(master, b"k")  # no newline: cbreak mode hands the key over at once
        assert read_key("> ", fd=slave) == "k"
        os.write(master, b"a")
        assert read_key("> ", fd=slave) == "a"
    finally:
        os.close(master)
        os.close(slave)


def test_o_opens_the_image_and_the_preview_fills_the_terminal(run, tmp_path):
    session = ReviewSession(run.run_dir)
    opened = []
    with open(tmp_path / "screen.txt", "w") as screen:
        console = Console(file=screen, width=120)
        made = session.run_loop(_script("unused"), console, key=_script("o", "x", "a", "q"),
                                opener=lambda path: opened.append(path))
    assert made == 1 and opened == [session.items.iloc[0]["image_path"]]
    text = (tmp_path / "screen.txt").read_text()
    assert "unknown key; [a]ccept" in text
    assert max(line.count("▀") for line in text.splitlines()) == 32  # a 32-pixel-wide preview
