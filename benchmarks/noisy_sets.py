"""Benchmark labelclean on the shared CIFAR-10 / MNIST subsets with injected label noise.

    python benchmarks/noisy_sets.py --dataset cifar10 --settings uniform:0.2 \
        --methods ce mlc mslg ieg mlnt auto [--cleanlab] [--oracle] [--limit N] [--epochs E]

For each setting the clean labels get noise from ``labelclean simulate`` (10 trusted images
per class, excluded from the noisy part), then each method audits the noisy manifest with the
same backbone, epochs and seed and is evaluated against the truth. ``--cleanlab`` adds
cleanlab (``find_label_issues`` with defaults, and ``get_label_quality_scores``) on
out-of-sample probabilities from K-fold cross-validation (K=4) of the same backbone and
epochs; ``--oracle`` the same K-fold training on the clean labels, scoring ``1 − p(given)``:
the ceiling for this backbone. cleanlab is a benchmark-only dependency
(``pip install cleanlab``). Data is read from ``../shared/data``; without it the script says
so and exits. Results go to docs/benchmarks.md (section ``noisy_<dataset>``) and
docs/benchmark-results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import ROOT, SHARED_DATA, command, fmt, machine, write_section
from PIL import Image

from labelclean import RunConfig, audit
from labelclean.evaluate import evaluate_run
from labelclean.metrics import detection_metrics, precision_recall_f1
from labelclean.simulate import simulate

CIFAR_MAP = "truck:automobile,bird:airplane,deer:horse,cat:dog,dog:cat"
# MNIST's usual asymmetric setting (Patrini et al. 2017): 2->7, 3->8, 5<->6, 7->1.
MNIST_MAP = "2:7,3:8,5:6,6:5,7:1"
CACHE = ROOT / "benchmarks" / ".cache"


def materialise(name: str, limit: int | None) -> Path:
    """Write the shared arrays as PNG files plus a clean manifest (once; cached)."""
    path = SHARED_DATA / f"{name}_subset.npz"
    if not path.is_file():
        print(f"skipping: {path} not found (benchmark data lives in ../shared/data)")
        sys.exit(0)
    data = np.load(path, allow_pickle=False)
    x, y, classes = data["x"], data["y"], [str(c) for c in data["classes"]]
    n = len(y) if limit is None else min(limit, len(y))
    root = CACHE / f"{name}-{n}"
    manifest = root / "clean.csv"
    if manifest.is_file():
        return manifest
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        rel = f"images/{i:05d}.png"
        Image.fromarray(x[i]).save(root / rel)
        rows.append((f"{name}_{i:05d}", rel, classes[int(y[i])]))
    pd.DataFrame(rows, columns=["id", "path", "label"]).to_csv(manifest, index=False)
    return manifest


def kfold_probs(manifest: Path, labels: list[str], classes: list[str], k: int, epochs: int,
                seed: int, augment: str, work: Path) -> tuple[np.ndarray, float]:
    """Out-of-sample probabilities from K-fold training of the default backbone with ``ce``."""
    from labelclean.data.images import decode_images
    from labelclean.methods.ce import CrossEntropy
    from labelclean.pipeline import fit_batch_size, fit_image_size
    from labelclean.progress import Reporter
    from labelclean.train.loop import _normalisation, train

    started = time.perf_counter()
    frame = pd.read_csv(manifest, dtype=str)
    paths = [str((manifest.parent / p).resolve()) for p in frame["path"]]
    size = fit_image_size(paths, "small_cnn")
    pixels = decode_images(paths, size).pixels
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[v] for v in labels])
    n = len(y)
    folds = np.random.default_rng(seed).permutation(n) % k
    probs = np.zeros((n, len(classes)))
    for f in range(k):
        tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        config = RunConfig(dataset=str(manifest), method="ce", epochs=epochs, image_size=size,
                           batch_size=fit_batch_size(len(tr)), augment=augment, seed=seed + f)
        result = train(config, pixels[tr], y[tr], torch.zeros(len(tr), dtype=torch.bool),
                       [str(i) for i in tr], len(classes), CrossEntropy(), work / f"fold{f}", Reporter())
        model = result.model.eval()
        mean, std = _normalisation(model, pixels[tr])
        with torch.no_grad():
            xb = pixels[te].float().div(255).sub(mean).div(std)
            if model.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            probs[te] = torch.cat([model(xb[i:i + 512]).softmax(1) for i in range(0, len(te), 512)]).numpy()
    return probs, time.perf_counter() - started


def _truth_frame(run_dir: Path, truth: Path) -> tuple[pd.DataFrame, np.ndarray]:
    scores = pd.read_parquet(run_dir / "scores.parquet")
    scores = scores[~scores["verified"].astype(bool)]
    true = pd.read_csv(truth, dtype=str).set_index("id")["label"]
    wrong = (scores["given_label"].astype(str).to_numpy() != true.loc[scores["sample_id"]].to_numpy())
    return scores, wrong


def column_metrics(run_dir: Path, truth: Path) -> dict[str, dict[str, float]]:
    """AUROC and AP of every evidence column of a run (the lever study: which signal ranks best)."""
    from labelclean.metrics import auroc, average_precision

    scores, wrong = _truth_frame(run_dir, truth)
    out = {}
    for name in scores.columns:
        if not (name.endswith("_suspicion") or name.endswith("_p_wrong") or name == "aum"):
            continue
        values = pd.to_numeric(scores[name], errors="coerce").to_numpy()
        values = -values if name == "aum" else values  # a low margin is suspicious
        out[name] = {"auroc": auroc(values, wrong), "ap": average_precision(values, wrong)}
    members = [c for c in scores.columns if c.endswith("_p_wrong")]
    if len(members) > 1:  # auto's ranking before the late-phase lever: the members' mean posterior
        values = scores[members].to_numpy(dtype=np.float64).mean(1)
        out["members_mean_p_wrong"] = {"auroc": auroc(values, wrong), "ap": average_precision(values, wrong)}
    return out


def f1_at(run_dir: Path, truth: Path, k: int) -> float:
    """F1 of a run's top ``k`` by its ranking (to compare rankings at another tool's count)."""
    scores, wrong = _truth_frame(run_dir, truth)
    top = np.zeros(len(wrong), dtype=bool)
    top[np.argsort(-scores["suspicion"].to_numpy(dtype=np.float64), kind="stable")[:k]] = True
    return precision_recall_f1(top, wrong)["f1"]


def loss_row(run_dir: Path, truth: Path, ce: dict) -> dict:
    """The bar a single run must clear: one plain ``ce`` run scored by its final model's loss on
    its own (un-augmented) training images, flagged by the same mixture count as the audit."""
    from labelclean.scoring import decide

    scores, wrong = _truth_frame(run_dir, truth)
    loss = scores["final_suspicion"].to_numpy(dtype=np.float64)
    flagged = decide(loss, np.zeros(len(loss), dtype=bool)).is_suspect
    m = detection_metrics(loss, flagged, wrong)
    return {**m, "label_accuracy_before": float(1 - wrong.mean()), "label_accuracy_after_relabel": float("nan"),
            "wall_seconds": ce["wall_seconds"], "train_seconds": ce["train_seconds"], "epochs": ce["epochs"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=["cifar10", "mnist"], default=["cifar10"])
    parser.add_argument("--settings", nargs="+", default=["uniform:0.2"])
    parser.add_argument("--methods", nargs="+", default=["ce", "mlc", "mslg", "ieg", "mlnt", "auto"])
    parser.add_argument("--cleanlab", action="store_true")
    parser.add_argument("--oracle", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images")
    parser.add_argument("--epochs", type=int, default=None, help="default: labelclean's fit to data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--trusted-sample", action="store_true",
                        help="the trusted rows are a random sample of the noisy manifest (verified "
                             "labels kept), as a team verifying a sample has: the audit's exam runs")
    parser.add_argument("--auto-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an `--option` for the auto runs (repeatable), to measure a variant")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each audit's run folder and the simulated labels under this folder")
    parser.add_argument("--section", default=None, help="docs section name (default: noisy_<datasets>)")
    parser.add_argument("--render", type=Path, default=None,
                        help="rebuild the docs section from a saved raw JSON file, without running")
    args = parser.parse_args()
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        name = args.section or args.render.stem
        write_section(name, "\n\n".join(render(r) for r in saved["datasets"].values()), saved)
        return
    blocks, raws = [], {}
    name = args.section or "noisy_" + "_".join(args.datasets)
    for dataset in args.datasets:  # written after each dataset: a stopped run keeps what it did
        block, raw = run_dataset(dataset, args)
        blocks.append(block)
        raws[dataset] = raw
        write_section(name, "\n\n".join(blocks), {"command": command(), "machine": machine(), "datasets": raws})


def run_dataset(dataset: str, args: argparse.Namespace) -> tuple[str, dict]:
    manifest = materialise(dataset, args.limit)
    augment = "crop-flip" if dataset == "cifar10" else "crop"
    raw = {"command": command(), "machine": machine(), "dataset": dataset,
           "images": len(pd.read_csv(manifest)), "results": {}}
    oracle_cache: dict[tuple, tuple[np.ndarray, float]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name) if args.keep is None else args.keep / dataset
        tmp.mkdir(parents=True, exist_ok=True)
        for setting in args.settings:
            kind, rate = setting.split(":")
            sim_dir = tmp / setting.replace(":", "_")
            if kind == "asymmetric" and dataset != "cifar10":
                kind_map = MNIST_MAP
            else:
                kind_map = CIFAR_MAP
            report = simulate(manifest, sim_dir, kind, float(rate), seed=args.seed, trusted_per_class=10,
                              class_map=kind_map if kind == "asymmetric" else None,
                              trusted_sample=args.trusted_sample)
            print(f"{setting}: {report['flipped']} of {report['samples']} labels wrong", flush=True)
            rows, run_dirs = {}, {}
            for method in args.methods:
                config = RunConfig(dataset=str(sim_dir / "noisy.csv"), trusted=str(sim_dir / "trusted.csv"),
                                   out=str(tmp / f"{setting}-{method}"), method=method, augment=augment, overwrite=True,
                                   epochs=args.epochs, seed=args.seed,
                                   method_options=dict(o.split("=", 1) for o in args.auto_option)
                                   if method == "auto" else {})
                start, cpu_start = time.perf_counter(), time.process_time()
                result = audit(config)
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
                run_dirs[method] = result.run_dir
                ev = evaluate_run(result.run_dir, sim_dir / "truth.csv")
                rows[method] = {**{k: ev[k] for k in ("auroc", "ap", "precision", "recall", "f1", "flagged",
                                                      "errors", "label_accuracy_before",
                                                      "label_accuracy_after_relabel")},
                                "wall_seconds": wall, "cpu_seconds": cpu,
                                "train_seconds": result.summary["timings"]["train_seconds"],
                                "epochs": result.summary["epochs"]}
                rows[method]["columns"] = column_metrics(result.run_dir, sim_dir / "truth.csv")
                if "estimates" not in result.summary or not result.summary["estimates"].get("exam_rows"):
                    # The same ranking cut at the expected count (--flag-rule count), for comparison.
                    rows[method]["f1_count_rule"] = f1_at(result.run_dir, sim_dir / "truth.csv",
                                                          int(result.summary["estimated_errors"]))
                if method == "ce":
                    rows["training loss"] = loss_row(result.run_dir, sim_dir / "truth.csv", rows["ce"])
                print(f"  {method}: F1 {ev['f1']:.3f} AUROC {ev['auroc']:.3f} AP {ev['ap']:.3f} "
                      f"flagged {ev['flagged']}/{ev['errors']} acc {ev['label_accuracy_before']:.3f}->"
                      f"{ev['label_accuracy_after_relabel']:.3f} wall {wall:.0f}s", flush=True)
            epochs = next(iter(rows.values()))["epochs"] if rows else (args.epochs or 20)
            if args.cleanlab or args.oracle:
                noisy = pd.read_csv(sim_dir / "noisy.csv", dtype=str)
                truth = pd.read_csv(sim_dir / "truth.csv", dtype=str).set_index("id").loc[noisy["id"]]
                classes = report["classes"]
                wrong = (noisy["label"].to_numpy() != truth["label"].to_numpy())
                given = np.array([classes.index(v) for v in noisy["label"]])
            if args.cleanlab:
                from cleanlab.filter import find_label_issues
                from cleanlab.rank import get_label_quality_scores

                probs, seconds = kfold_probs(sim_dir / "noisy.csv", list(noisy["label"]), classes,
                                             args.folds, epochs, args.seed, augment, tmp / "cl")
                issues = find_label_issues(given, probs)
                score = 1 - get_label_quality_scores(given, probs)
                m = detection_metrics(score, issues, wrong)
                after = np.where(issues, probs.argmax(1), given)
                true_idx = np.array([classes.index(v) for v in truth["label"]])
                rows["cleanlab"] = {**m, "label_accuracy_before": float((given == true_idx).mean()),
                                    "label_accuracy_after_relabel": float((after == true_idx).mean()),
                                    "wall_seconds": seconds, "train_seconds": seconds, "epochs": epochs}
                print(f"  cleanlab: F1 {m['f1']:.3f} AUROC {m['auroc']:.3f} wall {seconds:.0f}s", flush=True)
                for method, run_dir in run_dirs.items():  # rankings compared at cleanlab's count
                    rows[method]["f1_at_cleanlab_count"] = f1_at(run_dir, sim_dir / "truth.csv", int(issues.sum()))
            if args.oracle:
                # The oracle sees clean labels only, so settings that share the noisy part's ids
                # (the trusted draw does not depend on the noise) share one K-fold run.
                key = tuple(noisy["id"])
                if key not in oracle_cache:
                    oracle_cache[key] = kfold_probs(sim_dir / "noisy.csv", list(truth["label"]), classes,
                                                    args.folds, epochs, args.seed, augment, tmp / "or")
                probs, seconds = oracle_cache[key]
                score = 1 - probs[np.arange(len(given)), given]
                m = detection_metrics(score, score >= 0.5, wrong)
                rows["oracle"] = {**m, "label_accuracy_before": float("nan"),
                                  "label_accuracy_after_relabel": float("nan"),
                                  "wall_seconds": seconds, "train_seconds": seconds, "epochs": epochs}
                print(f"  oracle: AUROC {m['auroc']:.3f} AP {m['ap']:.3f}", flush=True)
            raw["results"][setting] = {"noise": report, "rows": rows, "epochs": epochs}
    raw["augment"], raw["seed"] = augment, args.seed
    return render(raw), raw


def render(raw: dict) -> str:
    """The markdown section of one dataset, from its raw results (also used by ``--render``)."""
    lines, targets = [], []
    for setting, result in raw["results"].items():
        report, rows = result["noise"], result["rows"]
        base = rows.get("ce", {}).get("wall_seconds")
        oracle = rows.get("oracle", {}).get("auroc")
        epochs = result.get("epochs") or next(iter(rows.values()))["epochs"]
        lines += [f"### {setting} ({report['flipped']} of {report['samples']} labels wrong, "
                  f"{report['trusted']} trusted, {epochs} epochs)", "",
                  "| method | AUROC | AUROC below oracle | AP | precision | recall | F1 | flagged / errors | "
                  "label acc. before -> after | wall s | time vs ce | CPU time vs ce |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        cpu_base = rows.get("ce", {}).get("cpu_seconds")
        for name, r in rows.items():
            rel = fmt(r["wall_seconds"] / base, 2) if base else "n/a"
            cpu_rel = fmt(r["cpu_seconds"] / cpu_base, 2) if cpu_base and r.get("cpu_seconds") else "n/a"
            gap = fmt(oracle - r["auroc"]) if oracle is not None and name != "oracle" else "n/a"
            lines.append(
                f"| {name} | {fmt(r['auroc'])} | {gap} | {fmt(r['ap'])} | {fmt(r['precision'])} | "
                f"{fmt(r['recall'])} | {fmt(r['f1'])} | {r['flagged']} / {r['errors']} | "
                f"{fmt(r['label_accuracy_before'])} -> {fmt(r['label_accuracy_after_relabel'])} | "
                f"{r['wall_seconds']:.0f} | {rel} | {cpu_rel} |")
        lines.append("")
        if "auto" in rows:
            targets.append(target_row(setting, rows))
    levers = [lever_row(setting, result["rows"]) for setting, result in raw["results"].items()
              if "columns" in result["rows"].get("auto", {})]
    if levers:
        lines += ["### Levers: AUROC / AP of each ranking inside the `auto` run", "",
                  "`auto` ranks by the final model's probability of the label over the un-augmented "
                  "image and two shifted views (`final_views_suspicion`); before, by the late-phase "
                  "belief (`late_suspicion`), and before that by the members' mean calibrated "
                  "posterior. F1 at cleanlab's count: the top k of each ranking, k = the number "
                  "cleanlab flags.", "",
                  "| setting | auto (final model, shifted views) | late phase | members' mean "
                  "posterior | final model, un-augmented | mean over all epochs | IEG | "
                  "training-loss row (ce) | cleanlab | F1 at cleanlab's count: auto / ce / cleanlab |",
                  "|---|---|---|---|---|---|---|---|---|---|", *levers, ""]
    if targets:
        lines += ["### Targets (default `auto` against cleanlab and the oracle)", "",
                  "| setting | F1 auto / cleanlab | AUROC auto / cleanlab | wall auto / cleanlab | "
                  "label acc. before -> after (auto) | flagged / errors (auto) | AUROC oracle (gap) |",
                  "|---|---|---|---|---|---|---|", *targets, ""]
    machine_ = raw["machine"]
    head = [f"## {raw['dataset']} subset with injected noise ({raw['images']} images)", "",
            f"Command: `{raw['command']}`; machine: {machine_['cpu_count']} CPU cores "
            f"({machine_['platform']}); " + ", ".join(
                f"{k} {machine_[k]}" for k in ("labelclean", "torch", "torchvision", "cleanlab")
                if k in machine_) + f"; backbone small_cnn, `--augment {raw.get('augment', 'crop-flip' if raw['dataset'] == 'cifar10' else 'crop')}`, "
            f"seed {raw.get('seed', 0)}; raw JSON in docs/benchmark-results/. \"AUROC below oracle\" is "
            "the oracle's AUROC minus the method's: the distance to this backbone's ceiling.",
            ""]
    return "\n".join(head + lines)


def lever_row(setting: str, rows: dict) -> str:
    cols = rows["auto"]["columns"]

    def pair(m: dict | None) -> str:
        return f"{fmt(m['auroc'])} / {fmt(m['ap'])}" if m else "n/a"

    loss, cl = rows.get("training loss"), rows.get("cleanlab")
    f1s = " / ".join(fmt(rows[n].get("f1_at_cleanlab_count", float("nan"))) if n in rows else "n/a"
                     for n in ("auto", "ce")) + (f" / {fmt(cl['f1'])}" if cl else " / n/a")
    return (f"| {setting} | {pair(cols.get('final_views_suspicion'))} | {pair(cols.get('late_suspicion'))} | "
            f"{pair(cols.get('members_mean_p_wrong'))} | "
            f"{pair(cols.get('final_suspicion'))} | {pair(cols.get('ce_suspicion'))} | "
            f"{pair(cols.get('ieg_suspicion'))} | {pair(loss)} | {pair(cl)} | {f1s} |")


def target_row(setting: str, rows: dict) -> str:
    a, c, o = rows.get("auto"), rows.get("cleanlab"), rows.get("oracle")
    if a is None:
        return f"| {setting} | n/a | n/a | n/a | n/a | n/a | n/a |"
    nan = {"f1": float("nan"), "auroc": float("nan"), "wall_seconds": float("nan")}
    c = c or nan
    o_txt = f"{fmt(o['auroc'])} ({fmt(o['auroc'] - a['auroc'])})" if o else "n/a"
    count_rule = f" (count rule {fmt(a['f1_count_rule'])})" if "f1_count_rule" in a else ""
    return (f"| {setting} | {fmt(a['f1'])}{count_rule} / {fmt(c['f1'])} | {fmt(a['auroc'])} / {fmt(c['auroc'])} | "
            f"{fmt(a['wall_seconds'] / c['wall_seconds'], 2)} | {fmt(a['label_accuracy_before'])} -> "
            f"{fmt(a['label_accuracy_after_relabel'])} | {a['flagged']} / {a['errors']} | {o_txt} |")


if __name__ == "__main__":
    main()
