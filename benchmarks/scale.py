"""How an audit grows with the number of rows: time and peak memory per stage.

    python benchmarks/scale.py [--rows 100000 300000 1000000] [--dim 512] [--classes 10]
                               [--noise 0.1] [--method auto] [--work /tmp/labelclean-scale]
                               [--images 0 | --images 100000 300000 --image-size 16 --epochs 1]

**Embeddings** (``--features``): for each row count, random 512-dimensional embeddings of
``--classes`` well-separated Gaussian classes (as a pretrained encoder gives on a dataset it
knows), a manifest of ids and labels with ``--noise`` of the labels flipped to another class,
and a trusted set of 10 verified rows per class drawn from the dataset (so the exam runs). The
audit runs as its own process, ``labelclean audit manifest.csv --features emb.npy --trusted
trusted.csv`` with the defaults, and the benchmark records its wall time, its peak resident
memory (``wait4``), the time and peak memory at the end of each stage (``summary.json``'s
``timings.stages``), MLNT's kNN time, and AUROC/AP/F1 against the planted noise. Above
``labelclean.knn.EXACT_BUDGET`` (N²·D) MLNT's neighbours come from an IVF index: its recall@10
against exact search is measured on 1,000 random queries.

**Images** (``--images N ...``): a manifest of N small PNG files (``--image-size`` pixels, a
coloured square per class on noise) audited from pixels with ``small_cnn`` for ``--epochs``
epochs: decode and training time, and peak memory (the pixel cache is ``N·3·S²`` bytes).

Synthetic data on purpose: nothing is learned from ``../shared/data``. Not part of the test
suite. Results go to docs/benchmarks.md (section ``scale``) and docs/benchmark-results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from common import command, fmt, machine, write_section

from labelclean.knn import EXACT_BUDGET, FaissKnn
from labelclean.metrics import detection_metrics

TRUSTED_PER_CLASS = 10
_CHUNK = 100_000


def write_labels(out: Path, rng: np.random.Generator, true: np.ndarray, classes: int, noise: float,
                 paths: list[str] | None = None) -> Path:
    """``manifest.csv`` (given labels: ``noise`` of them flipped to another class, with
    ``paths`` when given), ``truth.csv`` and ``trusted.csv`` (up to ``TRUSTED_PER_CLASS`` true
    labels a class) in ``out``. Class names are zero-padded, so that their sorted order (the
    column order labelclean expects of an ``.npy``) is their index order."""
    rows = len(true)
    given = true.copy()
    flip = rng.random(rows) < noise
    given[flip] = (true[flip] + rng.integers(1, classes, int(flip.sum()))) % classes
    names = np.array([f"c{k:0{len(str(classes - 1))}d}" for k in range(classes)])
    ids = np.array([f"s{i:07d}" for i in range(rows)])
    manifest = {"id": ids, **({"path": paths} if paths is not None else {}), "label": names[given]}
    pd.DataFrame(manifest).to_csv(out / "manifest.csv", index=False)
    pd.DataFrame({"id": ids, "label": names[true]}).to_csv(out / "truth.csv", index=False)
    picks = np.concatenate([rng.choice(np.flatnonzero(true == k), min(TRUSTED_PER_CLASS, int((true == k).sum())),
                                       replace=False) for k in range(classes)])
    pd.DataFrame({"id": ids[picks], "label": names[true[picks]]}).to_csv(out / "trusted.csv", index=False)
    return out


def make_embeddings(work: Path, rows: int, dim: int, classes: int, noise: float, seed: int) -> Path:
    """Write ``emb.npy`` (memory-mapped, chunk by chunk), ``manifest.csv``, ``trusted.csv`` and
    ``truth.csv`` for ``rows`` samples; returns the folder."""
    out = work / f"emb-{rows}"
    if (out / "truth.csv").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    true = rng.integers(0, classes, rows)
    emb = np.lib.format.open_memmap(out / "emb.npy", mode="w+", dtype=np.float32, shape=(rows, dim))
    for start in range(0, rows, _CHUNK):
        y = true[start:start + _CHUNK]
        # Per-dimension noise of 0.06 against unit-norm centres: classes overlap at the edges.
        emb[start:start + len(y)] = centres[y] + rng.normal(0, 0.06, (len(y), dim)).astype(np.float32)
    emb.flush()
    del emb
    return write_labels(out, rng, true, classes, noise)


def make_images(work: Path, rows: int, size: int, classes: int, noise: float, seed: int) -> Path:
    """``rows`` PNG files of ``size`` pixels, a manifest with ``noise`` of the labels flipped."""
    from PIL import Image

    out = work / f"img-{rows}-{size}"
    if (out / "truth.csv").exists():
        return out
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (classes, 3))
    true = rng.integers(0, classes, rows)
    paths = []
    for i, y in enumerate(true):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        img[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = colours[y]
        sub = out / "images" / f"{i // 10_000:03d}"
        if i % 10_000 == 0:
            sub.mkdir(exist_ok=True)
        path = sub / f"{i:07d}.png"
        Image.fromarray(img).save(path, compress_level=1)
        paths.append(str(path.relative_to(out)))
    return write_labels(out, rng, true, classes, noise, paths)


def make_probs(work: Path, rows: int, classes: int, noise: float, seed: int) -> Path:
    """``probs.npy``: out-of-sample-like predicted probabilities (the true class on top for 80%
    of the rows, another class for the rest, softmax of Gaussian logits), written chunk by chunk,
    and a manifest of ids and labels with ``noise`` of them flipped."""
    out = work / f"probs-{rows}-{classes}"
    if (out / "truth.csv").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    true = rng.integers(0, classes, rows)
    probs = np.lib.format.open_memmap(out / "probs.npy", mode="w+", dtype=np.float32, shape=(rows, classes))
    for start in range(0, rows, _CHUNK):
        y = true[start:start + _CHUNK]
        top = np.where(rng.random(len(y)) < 0.8, y, rng.integers(0, classes, len(y)))
        z = rng.normal(0, 1, (len(y), classes)).astype(np.float32)
        z[np.arange(len(y)), top] += np.log(classes) + 2.5  # the top class holds about 0.9
        z = np.exp(z - z.max(1, keepdims=True))
        probs[start:start + len(y)] = z / z.sum(1, keepdims=True)
    probs.flush()
    del probs
    return write_labels(out, rng, true, classes, noise)


def generated(make: Any, *args: Any) -> Path:
    """``make(*args)`` (data generation, the recall measurement) in a fresh process. The audit's peak RSS comes from ``wait4``, and Linux
    carries the high-water mark of the process that starts a child into the child's: data
    generated here would be counted in every stage of the audit that follows."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(make, args)


def gpu_name() -> dict:
    """The CUDA device's name, asked of a child process (torch is not imported here, to keep
    this process small: see :func:`generated`)."""
    code = "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    name = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    return {"gpu": name} if name else {}


def run_audit(folder: Path, extra: list[str]) -> dict:
    """``labelclean audit`` as a child process: its wall time, peak RSS and summary."""
    run_dir = folder / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [str(Path(sys.executable).with_name("labelclean")), "audit", str(folder / "manifest.csv"),
           "--trusted", str(folder / "trusted.csv"), "--out", str(run_dir), "--quiet", *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stderr = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"audit failed on {folder}: {stderr.strip()[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    scores = pd.read_parquet(run_dir / "scores.parquet", columns=["sample_id", "given_label", "verified",
                                                                  "suspicion", "is_suspect"])
    truth = pd.read_csv(folder / "truth.csv", dtype=str).set_index("id")["label"]
    free = scores[~scores["verified"]]
    wrong = free["given_label"].to_numpy() != truth.loc[free["sample_id"]].to_numpy()
    quality = detection_metrics(free["suspicion"].to_numpy(), free["is_suspect"].to_numpy(), wrong)
    knn = summary["method_summary"].get("member_summaries", {}).get("mlnt", {}).get(
        "knn_seconds", summary["method_summary"].get("knn_seconds"))
    return {"wall_seconds": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "stages": summary["timings"]["stages"], "knn_seconds": knn,
            "train_rows_per_second": summary["timings"]["train_images_per_second"],
            "epochs": summary["epochs"], "batch_size": summary["batch_size"],
            "flagged": summary["flagged"], "errors": int(wrong.sum()),
            **{k: round(float(v), 4) for k, v in quality.items() if k not in ("flagged", "errors")}}


def ivf_recall(path: Path, k: int = 10, queries: int = 1000, seed: int = 0) -> dict:
    """recall@k of the approximate neighbours (as MLNT gets them) against exact search, and
    the share of each one's neighbours in its own true class (what MLNT's synthetic flips
    need), for both."""
    import faiss

    x = np.load(path, mmap_mode="r")
    n = len(x)
    rng = np.random.default_rng(seed)
    q = np.sort(rng.choice(n, queries, replace=False))
    # Same standardisation as the linear head's input (labelclean.train.loop).
    x = np.asarray(x, dtype=np.float32)
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    approx = FaissKnn(seed=seed).fit(x).kneighbors(k)[q]
    exact = faiss.IndexFlatL2(x.shape[1])
    exact.add(x)
    _, found = exact.search(x[q], k + 1)
    true = pd.read_csv(path.parent / "truth.csv", dtype=str)["label"].to_numpy()
    hits, same_exact = 0, 0.0
    for i, row in enumerate(found):
        truth = [j for j in row if j != q[i]][:k]
        hits += len(set(truth) & set(approx[i].tolist()))
        same_exact += float(np.mean(true[truth] == true[q[i]]))
    same_approx = float(np.mean(true[approx] == true[q][:, None]))
    return {"recall_at_10": round(hits / (k * queries), 4),
            "same_class_approx": round(same_approx, 4), "same_class_exact": round(same_exact / queries, 4)}


def render(raw: dict) -> str:
    m = raw.get("machine", {})
    where = f"a {m.get('cpu_count', '?')}-core machine" + (f" with an {m['gpu']} (`--device auto`: CUDA)"
                                                          if m.get("gpu") else ", CPU only")
    lines = [
        f"Time and peak memory per stage as the rows grow, on {where} "
        "(`benchmarks/scale.py`; synthetic data, planted label noise).",
        "",
        f"Command: `{raw['command']}`",
        "",
    ]
    for kind, runs in (("embeddings", raw.get("embeddings", {})), ("images", raw.get("images", {})),
                       ("predicted probabilities", raw.get("probs", {}))):
        if not runs:
            continue
        first = next(iter(runs.values()))
        stage_names = [s["stage"] for s in first["stages"]]
        lines += [f"**{kind}** ({raw['settings'][kind]})", "",
                  "| rows | wall | peak RSS | " + " | ".join(stage_names) + " | kNN (in train) | rows/s (train) "
                  "| AUROC | AP | F1 |",
                  "|---" * (len(stage_names) + 8) + "|"]
        for rows, r in runs.items():
            cells = [f"{s['seconds']:.1f} s / {s['peak_rss_mb'] / 1024:.2f} GiB" for s in r["stages"]]
            lines.append(f"| {int(rows):,} | {r['wall_seconds']:.0f} s | {r['peak_rss_mb'] / 1024:.2f} GiB | "
                         + " | ".join(cells)
                         + f" | {fmt(r['knn_seconds'] or float('nan'), 1)} s | {r['train_rows_per_second'] or 0:,.0f} "
                         f"| {fmt(r['auroc'])} | {fmt(r['ap'])} | {fmt(r['f1'])} |")
        lines.append("")
        lines.append("Each stage cell: seconds / peak resident memory of the process at the end of the "
                     "stage. Peak RSS of the whole audit is measured from outside (`wait4`).")
        lines.append("")
    if raw.get("ivf_recall"):
        lines += ["MLNT's neighbours above the exact budget (PCA to 64 dimensions, then IVF) against "
                  "exact search at full width, 1,000 random queries:", "",
                  "| rows | recall@10 | neighbours in the query's true class: approximate / exact |",
                  "|---|---|---|"]
        for n, v in raw["ivf_recall"].items():
            if isinstance(v, dict):
                lines.append(f"| {int(n):,} | {v['recall_at_10']:.3f} | {v['same_class_approx']:.3f} / "
                             f"{v['same_class_exact']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", type=int, default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--method", default="auto")
    parser.add_argument("--images", nargs="*", type=int, default=[])
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the image audits")
    parser.add_argument("--probs", nargs="*", type=int, default=[],
                        help="rows of --pred-probs audits (no training), with --prob-classes classes")
    parser.add_argument("--prob-classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/labelclean-scale"))
    parser.add_argument("--no-recall", action="store_true", help="skip the IVF recall measurement")
    parser.add_argument("--section", default="scale")
    parser.add_argument("--recall-only", type=Path, default=None,
                        help="recompute the neighbour measurements into this saved raw JSON, no audits")
    args = parser.parse_args()
    if args.recall_only is not None:
        raw = json.loads(args.recall_only.read_text())
        for rows in raw["embeddings"]:
            if float(rows) ** 2 * args.dim > EXACT_BUDGET:
                folder = generated(make_embeddings, args.work, int(rows), args.dim, args.classes, args.noise,
                                   args.seed)
                raw["ivf_recall"][rows] = generated(ivf_recall, folder / "emb.npy", 10, 1000, args.seed)
                print(rows, raw["ivf_recall"][rows], flush=True)
        write_section(args.section, render(raw), raw)
        return
    gpu = gpu_name()
    raw: dict = {"command": command(), "machine": {**machine(), **gpu}, "embeddings": {}, "images": {},
                 "ivf_recall": {},
                 "settings": {"embeddings": f"{args.dim} dimensions, {args.classes} classes, "
                                            f"{args.noise:.0%} noise, --method {args.method}, defaults",
                              "images": f"{args.image_size}x{args.image_size} PNG, {args.classes} classes, "
                                        f"small_cnn, --epochs {args.epochs}, --method {args.method}",
                              "predicted probabilities": f"`--pred-probs` .npy, {args.prob_classes:,} "
                                                         f"classes, {args.noise:.0%} noise, no training"},
                 "probs": {}}
    for rows in args.rows:
        folder = generated(make_embeddings, args.work, rows, args.dim, args.classes, args.noise, args.seed)
        r = run_audit(folder, ["--features", str(folder / "emb.npy"), "--method", args.method,
                               "--seed", str(args.seed)])
        raw["embeddings"][rows] = r
        print(f"embeddings {rows:,}: {r['wall_seconds']} s, peak {r['peak_rss_mb'] / 1024:.2f} GB, "
              f"AUROC {r['auroc']:.3f}, stages {[(s['stage'], s['seconds']) for s in r['stages']]}",
              flush=True)
        if float(rows) ** 2 * args.dim > EXACT_BUDGET and not args.no_recall:
            raw["ivf_recall"][rows] = generated(ivf_recall, folder / "emb.npy", 10, 1000, args.seed)
            print(f"  IVF recall@10: {raw['ivf_recall'][rows]}", flush=True)
    for rows in (r for r in args.images if r > 0):  # --images 0: no image audits
        folder = generated(make_images, args.work, rows, args.image_size, args.classes, args.noise, args.seed)
        r = run_audit(folder, ["--method", args.method, "--epochs", str(args.epochs),
                               "--seed", str(args.seed), "--image-size", str(args.image_size)])
        raw["images"][rows] = r
        print(f"images {rows:,}: {r['wall_seconds']} s, peak {r['peak_rss_mb'] / 1024:.2f} GB, "
              f"stages {[(s['stage'], s['seconds']) for s in r['stages']]}", flush=True)
        write_section(args.section, render(raw), raw)  # after each size: a long run keeps what it measured
    for rows in args.probs:
        folder = generated(make_probs, args.work, rows, args.prob_classes, args.noise, args.seed)
        r = run_audit(folder, ["--pred-probs", str(folder / "probs.npy"), "--seed", str(args.seed)])
        raw["probs"][rows] = r
        print(f"pred-probs {rows:,} x {args.prob_classes:,}: {r['wall_seconds']} s, peak "
              f"{r['peak_rss_mb'] / 1024:.2f} GB, AUROC {r['auroc']:.3f}, "
              f"stages {[(s['stage'], s['seconds']) for s in r['stages']]}", flush=True)
        write_section(args.section, render(raw), raw)
    write_section(args.section, render(raw), raw)


if __name__ == "__main__":
    main()
