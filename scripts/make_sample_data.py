"""Build ``sample_data/`` from scikit-learn's bundled handwritten digits (run once; needs sklearn).

The digits are the UCI "Optical Recognition of Handwritten Digits" test set (Alpaydin and
Kaynak, 1998), licensed CC BY 4.0, as shipped inside scikit-learn. 5% of the labels are flipped
to a random other class with a fixed seed; ``truth.csv`` keeps the clean labels.

``trusted.csv`` is what a team would verify: a simple random sample of 100 rows of the
dataset (so some of their given labels are wrong, as in any random sample), with the true
label. The audit's exam needs the verified rows to be such a sample (``labelclean.exam``).
Ten images per class are never flipped (an earlier version used them as the trusted set; they
are kept out of the flips so that the images and their folders stay the same).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1] / "sample_data"
FLIP_RATE = 0.05
UNFLIPPED_PER_CLASS = 10
VERIFIED = 100


def main() -> None:
    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    truth = digits.target.astype(int)
    rng = np.random.default_rng(2026)
    n = len(truth)
    unflipped = np.zeros(n, dtype=bool)
    for k in range(10):
        unflipped[rng.choice(np.flatnonzero(truth == k), UNFLIPPED_PER_CLASS, replace=False)] = True
    candidates = np.flatnonzero(~unflipped)
    flipped = rng.choice(candidates, round(FLIP_RATE * n), replace=False)
    given = truth.copy()
    given[flipped] = (truth[flipped] + rng.integers(1, 10, len(flipped))) % 10
    annotator = rng.choice(["ann_a", "ann_b", "ann_c"], n)
    rows = []
    for i in range(n):
        sid = f"digit_{i:04d}"
        rel = Path("digits") / str(given[i]) / f"{sid}.png"
        (ROOT / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], "L").save(ROOT / rel)
        rows.append((sid, rel.as_posix(), str(given[i]), annotator[i], str(truth[i])))
    df = pd.DataFrame(rows, columns=["id", "path", "label", "annotator", "true_label"])
    df[["id", "path", "label", "annotator"]].to_csv(ROOT / "manifest.csv", index=False)
    trusted = np.zeros(n, dtype=bool)
    trusted[np.random.default_rng(2027).choice(n, VERIFIED, replace=False)] = True
    df[trusted][["path", "true_label"]].rename(columns={"true_label": "label"}).to_csv(
        ROOT / "trusted.csv", index=False
    )
    truth_df = df[["id", "path", "true_label"]].rename(columns={"true_label": "label"})
    truth_df.insert(2, "folder_id", [p.removeprefix("digits/") for p in truth_df["path"]])
    truth_df.to_csv(ROOT / "truth.csv", index=False)
    print(f"{n} images, {len(flipped)} flipped, {trusted.sum()} trusted")


if __name__ == "__main__":
    main()
