"""Audits on a team's own embeddings (``--features``): the fast path, and the path every
pretrained encoder takes (``--backbone timm:...`` embeds once, then audits the vectors).

    python benchmarks/embeddings.py --settings human:0.2 flip-to-one:0.3 instance:0.4 uniform:0.2 \
        [--limit 2500] [--embed-epochs 30] [--auto-option rank=late] [--trusted-sample]

No pretrained weights can be downloaded here, so the embedding model is trained the way a team's
model is trained elsewhere: the default backbone on the CIFAR-10 images that are *not* audited
(the rest of the shared training subset and its test split, clean labels), then frozen. The
audited images (the first ``--limit``) are embedded by it (its 256-d pooled features) and
written as ``embeddings.parquet`` keyed by id. Each noise setting comes from ``labelclean
simulate`` as in ``noisy_sets.py`` (10 trusted images per class, excluded from the noisy part;
with ``--trusted-sample`` drawn from it with their verified labels, so the audit's exam runs).

Rows: ``ce`` and ``auto`` audited with ``--features``; the training-loss row (the ``ce`` run's
final head scored on its own training vectors); cleanlab (``find_label_issues`` with defaults)
on 4-fold cross-validated probabilities of a multinomial logistic regression on the same
vectors (scikit-learn, a cleanlab dependency): the recipe cleanlab documents for embeddings.
The lever table gives, inside the ``auto`` run, the AUROC / AP of each ranking. Results go to
docs/benchmarks.md (``--section``, default ``embeddings``) and docs/benchmark-results/.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from common import SHARED_DATA, command, fmt, machine, write_section
from noisy_sets import CIFAR_MAP, column_metrics, loss_row, materialise

from labelclean import RunConfig, audit
from labelclean.evaluate import evaluate_run
from labelclean.metrics import detection_metrics
from labelclean.models import build_backbone
from labelclean.simulate import simulate
from labelclean.train.augment import augment

LEVER_COLUMNS = ("late_suspicion", "final_suspicion", "probe_suspicion", "probe_corrected_suspicion")


def train_embedder(x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The default backbone trained with cross-entropy on clean labels (crop-flip, SGD, cosine)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    pixels = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(y).long()
    scaled = pixels.float() / 255.0
    mean, std = scaled.mean((0, 2, 3)).view(1, 3, 1, 1), scaled.std((0, 2, 3)).view(1, 3, 1, 1)
    model = build_backbone("small_cnn", int(labels.max()) + 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * (len(labels) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=g)
        for i in range(0, len(order) - 127, 128):
            rows = order[i:i + 128]
            xb = (augment(pixels[rows], "crop-flip", g).float() / 255.0 - mean) / std
            loss = F.cross_entropy(model(xb), labels[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval(), mean, std


@torch.no_grad()
def embed(model: torch.nn.Module, x: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    pixels = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    return torch.cat([model.features((pixels[i:i + 512] - mean) / std).flatten(1)
                      for i in range(0, len(pixels), 512)]).numpy()


def cleanlab_row(vectors: pd.DataFrame, noisy: pd.DataFrame, truth: pd.DataFrame, classes: list[str],
                 seed: int) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.stack(vectors.loc[noisy["id"], "embedding"].to_numpy())
    given = np.array([classes.index(v) for v in noisy["label"]])
    true = np.array([classes.index(v) for v in truth.loc[noisy["id"], "label"]])
    started = time.perf_counter()
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probs = cross_val_predict(clf, x, given, cv=4, method="predict_proba")
    issues = find_label_issues(given, probs)
    score = 1 - get_label_quality_scores(given, probs)
    seconds = time.perf_counter() - started
    after = np.where(issues, probs.argmax(1), given)
    return {**detection_metrics(score, issues, given != true),
            "label_accuracy_before": float((given == true).mean()),
            "label_accuracy_after_relabel": float((after == true).mean()), "wall_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["human:0.2", "flip-to-one:0.3", "instance:0.4",
                                                          "uniform:0.2"])
    parser.add_argument("--limit", type=int, default=2500, help="audit the first N training images")
    parser.add_argument("--embed-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=None, help="audit epochs (default: labelclean's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--auto-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--section", default="embeddings")
    parser.add_argument("--keep", default=None, help="copy the embeddings, labels and run folders here")
    parser.add_argument("--trusted-sample", action="store_true",
                        help="the trusted rows are a random sample of the noisy manifest (verified "
                             "labels kept), as a team verifying a sample has: the audit's exam runs")
    args = parser.parse_args()
    path = SHARED_DATA / "cifar10_subset.npz"
    if not path.is_file():
        print(f"skipping: {path} not found (benchmark data lives in ../shared/data)")
        sys.exit(0)
    data = np.load(path, allow_pickle=False)
    classes = [str(c) for c in data["classes"]]
    n = min(args.limit, len(data["y"]))
    manifest = materialise("cifar10", n)
    held_x = np.concatenate([data["x"][n:], data["x_test"]])
    held_y = np.concatenate([data["y"][n:], data["y_test"]])
    started = time.perf_counter()
    model, mean, std = train_embedder(held_x, held_y, args.embed_epochs, args.seed)
    embed_seconds = time.perf_counter() - started
    ids = pd.read_csv(manifest, dtype=str)["id"]
    vectors = pd.DataFrame({"id": ids, "embedding": list(embed(model, data["x"][:n], mean, std))})
    raw = {"command": command(), "machine": machine(), "images": n, "embedder_images": len(held_y),
           "trusted_sample": args.trusted_sample,
           "embed_epochs": args.embed_epochs, "embed_seconds": embed_seconds, "results": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        emb = tmp / "embeddings.parquet"
        vectors.to_parquet(emb, index=False)
        vectors = vectors.set_index("id")
        for setting in args.settings:
            kind, rate = setting.split(":")
            sim = tmp / setting.replace(":", "_")
            report = simulate(manifest, sim, kind, float(rate), seed=args.seed, trusted_per_class=10,
                              class_map=CIFAR_MAP if kind == "asymmetric" else None,
                              trusted_sample=args.trusted_sample)
            print(f"{setting}: {report['flipped']} of {report['samples']} labels wrong", flush=True)
            truth_csv = sim / "truth.csv"
            rows: dict[str, dict] = {}
            for method in ("ce", "auto"):
                config = RunConfig(dataset=str(sim / "noisy.csv"), trusted=str(sim / "trusted.csv"),
                                   features=str(emb), out=str(tmp / f"{setting}-{method}"), method=method,
                                   overwrite=True, epochs=args.epochs, seed=args.seed,
                                   method_options=dict(o.split("=", 1) for o in args.auto_option)
                                   if method == "auto" else {})
                t0 = time.perf_counter()
                result = audit(config)
                wall = time.perf_counter() - t0
                ev = evaluate_run(result.run_dir, truth_csv)
                rows[method] = {**{k: ev[k] for k in ("auroc", "ap", "precision", "recall", "f1", "flagged",
                                                      "errors", "label_accuracy_before",
                                                      "label_accuracy_after_relabel")},
                                "wall_seconds": wall, "train_seconds": result.summary["timings"]["train_seconds"],
                                "epochs": result.summary["epochs"],
                                "columns": column_metrics(result.run_dir, truth_csv),
                                "ranked_by": result.summary["method_summary"].get("ranked_by")}
                if method == "ce":
                    rows["training loss"] = loss_row(result.run_dir, truth_csv, rows["ce"])
                print(f"  {method}: F1 {ev['f1']:.3f} AUROC {ev['auroc']:.3f} AP {ev['ap']:.3f} "
                      f"flagged {ev['flagged']}/{ev['errors']} wall {wall:.0f}s", flush=True)
            noisy = pd.read_csv(sim / "noisy.csv", dtype=str)
            truth = pd.read_csv(truth_csv, dtype=str).set_index("id")
            rows["cleanlab"] = cleanlab_row(vectors, noisy, truth, classes, args.seed)
            print(f"  cleanlab: F1 {rows['cleanlab']['f1']:.3f} AUROC {rows['cleanlab']['auroc']:.3f}", flush=True)
            raw["results"][setting] = {"noise": report, "rows": rows}
        if args.keep:
            shutil.copytree(tmp, args.keep, dirs_exist_ok=True)
    write_section(args.section, render(raw), raw)


def render(raw: dict) -> str:
    out = [f"## Audits on embeddings (`--features`), CIFAR-10 ({raw['images']} images)", "",
           f"Command: `{raw['command']}`; machine: {raw['machine']['cpu_count']} CPU cores, torch "
           f"{raw['machine']['torch']}. Embedding model: the default backbone trained with clean labels "
           f"on the {raw['embedder_images']} CIFAR-10 images that are not audited ({raw['embed_epochs']} "
           f"epochs, {raw['embed_seconds']:.0f} s), then frozen; 256-d pooled features. cleanlab: "
           "`find_label_issues` on 4-fold cross-validated logistic regression on the same vectors.", ""]
    out += ["| setting | method | AUROC | AP | precision | recall | F1 | flagged / errors | "
            "label acc. before -> after | wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for setting, r in raw["results"].items():
        for name, m in r["rows"].items():
            after = m.get("label_accuracy_after_relabel")
            acc = f"{fmt(m['label_accuracy_before'])} -> {fmt(after)}"
            flagged = f"{m.get('flagged', 'n/a')} / {m.get('errors', 'n/a')}"
            out.append(f"| {setting} | {name} | {fmt(m['auroc'])} | {fmt(m['ap'])} | {fmt(m['precision'])} | "
                       f"{fmt(m['recall'])} | {fmt(m['f1'])} | {flagged} | {acc} | {m['wall_seconds']:.0f} |")
    out += ["", "Inside the `auto` run, AUROC / AP of each ranking (`auto`: its order; the others: "
            "its columns):", "",
            "| setting | auto | late phase | final head, own vectors | plain cross-fitted head | "
            "corrected cross-fitted head | training-loss row | cleanlab |", "|---|---|---|---|---|---|---|---|"]
    for setting, r in raw["results"].items():
        a, cols = r["rows"]["auto"], r["rows"]["auto"]["columns"]

        def pair(m: dict | None) -> str:
            return "n/a" if not m else f"{fmt(m['auroc'])} / {fmt(m['ap'])}"

        out.append(f"| {setting} | {pair(a)} | " + " | ".join(pair(cols.get(c)) for c in LEVER_COLUMNS)
                   + f" | {pair(r['rows']['training loss'])} | {pair(r['rows']['cleanlab'])} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
