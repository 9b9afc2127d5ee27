"""Tiny synthetic datasets written to ``tmp_path``: image folders, CSV and Parquet manifests."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

CLASSES = ["cat", "dog", "fox"]
COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200)}


@pytest.fixture(autouse=True)
def _isolate_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own LABELCLEAN_CACHE (decoded pixels, embeddings)."""
    monkeypatch.setenv("LABELCLEAN_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _isolate_rng():
    """Tests must not leak global RNG state into each other."""
    state = torch.get_rng_state()
    np_state = np.random.get_state()
    yield
    torch.set_rng_state(state)
    np.random.set_state(np_state)


def make_image(colour: tuple[int, int, int], rng: np.random.Generator, size=(11, 17)) -> Image.Image:
    """A noisy image whose mean colour identifies its class."""
    h, w = size
    base = np.array(colour, dtype=np.float64)[None, None, :]
    noise = rng.normal(0, 40, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


@dataclass
class TinyData:
    root: Path  # image folder (class sub-folders hold the *given* labels)
    csv: Path  # manifest.csv beside the folder (paths relative to it), with extra columns
    parquet: Path
    trusted: Path
    truth: pd.DataFrame  # id, path, true label, given label
    flipped: set[str]  # ids whose given label is wrong


def build_tiny(tmp_path: Path, per_class: int = 16, flips: int = 4, seed: int = 0) -> TinyData:
    rng = np.random.default_rng(seed)
    base = tmp_path / "data"
    rows = []
    n = per_class * len(CLASSES)
    true = np.repeat(np.arange(len(CLASSES)), per_class)
    trusted_idx = set()
    for k in range(len(CLASSES)):
        trusted_idx.update(np.flatnonzero(true == k)[:2].tolist())
    candidates = [i for i in range(n) if i not in trusted_idx]
    flip_idx = rng.choice(candidates, flips, replace=False)
    given = true.copy()
    given[flip_idx] = (true[flip_idx] + 1) % len(CLASSES)
    for i in range(n):
        sid = f"s{i:03d}"
        rel = Path("images") / CLASSES[given[i]] / f"{sid}.png"
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        make_image(COLOURS[CLASSES[true[i]]], rng).save(base / rel)
        rows.append({"id": sid, "path": rel.as_posix(), "label": CLASSES[given[i]],
                     "true": CLASSES[true[i]], "note": f"n{i}", "score": i * 0.5})
    df = pd.DataFrame(rows)
    csv = base / "manifest.csv"
    df[["id", "path", "label", "note", "score"]].to_csv(csv, index=False)
    parquet = base / "manifest.parquet"
    df[["id", "path", "label", "note", "score"]].to_parquet(parquet, index=False)
    trusted = base / "trusted.csv"
    df.iloc[sorted(trusted_idx)][["path", "true"]].rename(columns={"true": "label"}).to_csv(
        trusted, index=False)
    return TinyData(base / "images", csv, parquet, trusted, df,
                    {f"s{i:03d}" for i in flip_idx})


@pytest.fixture
def tiny(tmp_path: Path) -> TinyData:
    return build_tiny(tmp_path)


def tree_digest(root: Path) -> dict[str, str]:
    """Hash of every file under ``root`` (to prove inputs are never modified)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


FAST = ["--backbone", "test_tiny", "--epochs", "4", "--batch-size", "12", "--lr", "0.1",
        "--image-size", "12", "--top", "3"]


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run the console entry point in-process; return (exit code, stdout, stderr)."""
    from labelclean import cli as cli_module

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["labelclean", *map(str, args)])
        code = 0
        try:
            cli_module.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
