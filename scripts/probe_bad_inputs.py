"""Run the CLI on bad inputs, odd files and interruptions; write what each gets to a Markdown table.

    .venv/bin/python scripts/probe_bad_inputs.py > docs/bad-inputs.md

Each case builds its input in a temporary folder, runs ``labelclean`` in a subprocess, and records
the exit code and the last line on stderr. A case passes when it exits with the expected code
and prints no traceback. Not part of the test suite (each case also has a test in ``tests/``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

FAST = ["--epochs", "1", "--image-size", "16", "--no-report", "--backbone", "test_tiny"]


def folder(root: Path, n: int = 12, classes: str = "abc") -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def manifest(root: Path, name: str, **columns: list) -> Path:
    paths = sorted(str(p.relative_to(root.parent)) for p in root.rglob("*.png"))
    frame = pd.DataFrame({"path": paths, "label": [p.split("/")[1] for p in paths]})
    for k, v in columns.items():
        frame[k] = v(frame) if callable(v) else v
    out = root.parent / name
    if name.endswith(".parquet"):
        frame.to_parquet(out)
    else:
        frame.to_csv(out, index=False)
    return out


def run(args: list[str], cwd: Path, interrupt_after: str | None = None) -> tuple[int, str, str]:
    cmd = [sys.executable, "-m", "labelclean.cli", *args]
    if interrupt_after is None:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
        return done.returncode, done.stdout, done.stderr
    proc = subprocess.Popen(cmd, cwd=cwd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + 120
    while interrupt_after not in seen and time.monotonic() < deadline:
        seen = proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    proc.stderr.close()
    return proc.wait(60), "", rest


Case = tuple[str, int, Callable[[Path], tuple[list[str], str | None]]]


def cases() -> list[Case]:
    def ok_folder(t: Path) -> tuple[list[str], str | None]:
        folder(t / "ds")
        return ["audit", "ds", "--out", "r", *FAST], None

    def missing(t: Path):
        return ["audit", "nothere", *FAST], None

    def one_class(t: Path):
        folder(t / "ds", classes="a")
        return ["audit", "ds", "--out", "r", *FAST], None

    def empty_csv(t: Path):
        (t / "m.csv").write_text("")
        return ["audit", "m.csv", *FAST], None

    def missing_column(t: Path):
        (t / "m.csv").write_text("file,label\nx.png,a\n")
        return ["audit", "m.csv", *FAST], None

    def duplicate_ids(t: Path):
        folder(t / "ds")
        manifest(t / "ds", "m.csv", id=lambda f: ["same"] * len(f))
        return ["audit", "m.csv", *FAST], None

    def corrupt(t: Path):
        folder(t / "ds", n=30)
        (t / "ds" / "a" / "0.png").write_bytes(b"not a png")
        (t / "ds" / "b" / "0.png").write_bytes(b"")
        return ["audit", "ds", "--out", "r", *FAST], None

    def corrupt_strict(t: Path):
        folder(t / "ds")
        (t / "ds" / "a" / "0.png").write_bytes(b"not a png")
        return ["audit", "ds", "--out", "r", "--strict", *FAST], None

    def unknown_trusted(t: Path):
        folder(t / "ds")
        (t / "t.csv").write_text("path,label\nds/a/0.png,zebra\n")
        return ["audit", "ds", "--trusted", "t.csv", *FAST], None

    def conflicting_trusted(t: Path):
        folder(t / "ds")
        (t / "t.csv").write_text("path,label\nds/a/0.png,a\nds/a/0.png,b\n")
        return ["audit", "ds", "--trusted", "t.csv", *FAST], None

    def bad_choice(t: Path):
        folder(t / "ds")
        return ["audit", "ds", "--backbone", "resnet9000"], None

    def huge_size(t: Path):
        folder(t / "ds")
        return ["audit", "ds", "--image-size", "100000"], None

    def bad_option(t: Path):
        folder(t / "ds")
        return ["audit", "ds", "--method", "mlc", "--option", "mode=bogus", *FAST], None

    def tiny(t: Path):
        folder(t / "ds", n=1, classes="ab")
        return ["audit", "ds", "--out", "r", *FAST[:-2]], None

    def non_utf8(t: Path):
        folder(t / "ds")
        os.rename(t / "ds" / "a" / "1.png", os.fsencode(t / "ds" / "a") + b"/caf\xe9.png")
        return ["audit", "ds", *FAST], None

    def list_labels(t: Path):
        folder(t / "ds")
        manifest(t / "ds", "m.parquet", label=lambda f: [[v] for v in f["label"]])
        return ["audit", "m.parquet", *FAST], None

    def bomb(t: Path):
        folder(t / "ds", n=30)
        Image.new("L", (14000, 14000)).save(t / "ds" / "a" / "big.png")
        return ["audit", "ds", "--out", "r", *FAST], None

    def out_inside(t: Path):
        folder(t / "ds")
        return ["audit", "ds", "--out", "ds/run", *FAST], None

    def out_is_input(t: Path):
        folder(t / "ds")
        (t / "t.csv").write_text("path,label\nds/a/0.png,a\n")
        run(["audit", "ds", "--trusted", "t.csv", "--out", "r", "--overwrite", *FAST], t)
        return ["report", "r", "--out", "t.csv"], None

    def rerun_without_overwrite(t: Path):
        folder(t / "ds")
        run(["audit", "ds", "--out", "r", *FAST], t)
        return ["audit", "ds", "--out", "r", *FAST], None

    def null_annotations(t: Path):
        folder(t / "ds")
        run(["audit", "ds", "--out", "r", *FAST], t)
        (t / "ls.json").write_text('[{"data": {"sample_id": "a/0.png"}, "annotations": null}]')
        return ["import-decisions", "r", "ls.json"], None

    def utf16(t: Path):
        folder(t / "ds")
        run(["audit", "ds", "--out", "r", *FAST], t)
        (t / "ls.json").write_text("[]", encoding="utf-16")
        return ["import-decisions", "r", "ls.json"], None

    def simulate_too_many(t: Path):
        folder(t / "ds")
        return ["simulate", "ds", "--noise", "uniform", "--rate", "0.2", "--trusted-per-class",
                "100", "--out", "sim"], None

    def max_cards(t: Path):
        folder(t / "ds")
        run(["audit", "ds", "--out", "r", *FAST], t)
        return ["report", "r", "--max-cards", "-5"], None

    def ctrl_c(t: Path):
        folder(t / "ds")
        return ["audit", "ds", "--out", "r", "--epochs", "300", "--image-size", "16",
                "--no-report", "--backbone", "test_tiny"], "epoch 2/"

    return [
        ("a valid image folder", 0, ok_folder),
        ("dataset path that does not exist", 1, missing),
        ("one class only", 1, one_class),
        ("empty CSV manifest", 1, empty_csv),
        ("manifest without the path column", 1, missing_column),
        ("duplicate ids in the manifest", 1, duplicate_ids),
        ("a corrupt and a zero-byte image (a few: skipped)", 0, corrupt),
        ("a corrupt image with --strict", 1, corrupt_strict),
        ("trusted label that is not a class", 1, unknown_trusted),
        ("the same image trusted with two labels", 1, conflicting_trusted),
        ("unknown --backbone", 2, bad_choice),
        ("--image-size 100000", 1, huge_size),
        ("unknown method option value", 2, bad_option),
        ("two images, default method", 0, tiny),
        ("file name that is not UTF-8", 1, non_utf8),
        ("Parquet labels that are lists", 1, list_labels),
        ("image above the pixel limit (14000 x 14000)", 0, bomb),
        ("--out inside the image folder", 1, out_inside),
        ("report --out naming an input", 1, out_is_input),
        ("audit into an earlier run's folder", 1, rerun_without_overwrite),
        ("Label Studio export with null annotations (nothing decided)", 0, null_annotations),
        ("decisions file in UTF-16", 1, utf16),
        ("simulate --trusted-per-class larger than a class", 1, simulate_too_many),
        ("report --max-cards -5", 2, max_cards),
        ("Ctrl-C during training", 130, ctrl_c),
    ]


def main() -> None:
    rows = []
    for name, expected, build in cases():
        tmp = Path(tempfile.mkdtemp(prefix="labelclean-probe-"))
        try:
            args, interrupt = build(tmp)
            code, out, err = run(args, tmp, interrupt)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        lines = [x for x in err.strip().splitlines() if x.strip()]
        last = next((x for x in lines if x.startswith(("error:", "interrupted"))), "")
        if last.endswith("problems in the input:"):
            last += " " + lines[lines.index(last) + 1].strip() + " …"
        if code == 0:
            last = next((x for x in lines if "skipped" in x and "note:" in x),
                        next((x for x in out.splitlines() if "scored" in x), last))
        if not last:
            last = next((x.strip(" │") for x in lines if "Invalid value" in x or "note:" in x),
                        lines[-1] if lines else "")
        ok = code == expected and "Traceback" not in err
        text = last.replace("|", "\\|").replace(str(tmp), "…")
        rows.append(f"| {name} | `labelclean {' '.join(args[:2])} …` | {code} | {'yes' if ok else 'NO'} | {text} |")
        print(f"{name}: exit {code}", file=sys.stderr)
    print("# Bad inputs tried, and what each gets\n")
    print("Made by `.venv/bin/python scripts/probe_bad_inputs.py > docs/bad-inputs.md` "
          "(each case in a fresh temporary folder; 'as expected' means the expected exit code "
          "and no traceback). Exit codes: 0 ok, 1 data or user error, 2 usage error, "
          "130 interrupted.\n")
    print("| case | command | exit | as expected | last line on stderr |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
