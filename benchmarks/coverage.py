"""Do the exam's 90% intervals hold? Coverage of noise rate, precision and recall.

    python benchmarks/coverage.py [--limit 1500] [--epochs 8] [--seeds 0 1] [--verified 50 100 200 500]

For each dataset (CIFAR-10 and MNIST subsets from ../shared/data), noise setting, seed and
number of verified rows, ``labelclean simulate --trusted-sample`` makes a noisy manifest whose
verified rows are a random sample of it (as a team verifying a sample has), ``labelclean audit``
scores it, and the stated 90% intervals are checked against the truth over the unverified rows:
the noise rate, the precision of the flagged set and its recall. Also recorded: how far the
flagged count is from the true number of wrong labels, against the model's own estimate (the
count before the exam). Small and fast on purpose: ``--method ce`` (the intervals rest on the
exam, not on the method), a subset of images and few epochs.
Results go to docs/benchmarks.md (section ``coverage``) and docs/benchmark-results/.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import command, machine, write_section
from noisy_sets import CIFAR_MAP, materialise

from labelclean import RunConfig, audit
from labelclean.simulate import simulate

SETTINGS = ["uniform:0.2", "flip-to-one:0.3", "instance:0.3", "asymmetric:0.3"]


def truth_of(run_dir: Path, sim_dir: Path) -> dict:
    scores = pd.read_parquet(run_dir / "scores.parquet")
    truth = pd.read_csv(sim_dir / "truth.csv", dtype=str).set_index("id")["label"]
    free = scores[~scores["verified"]]
    wrong = free["given_label"].to_numpy() != truth.loc[free["sample_id"]].to_numpy()
    flagged = free["is_suspect"].to_numpy()
    return {"rate": float(wrong.mean()), "wrong": int(wrong.sum()), "flagged": int(flagged.sum()),
            "precision": float((wrong & flagged).sum() / flagged.sum()) if flagged.any() else float("nan"),
            "recall": float((wrong & flagged).sum() / wrong.sum()) if wrong.any() else float("nan")}


def inside(x: float, iv: dict | None) -> bool | None:
    if iv is None or iv.get("estimate") is None or x != x:
        return None
    return bool(iv["low"] - 1e-9 <= x <= iv["high"] + 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["cifar10", "mnist"])
    parser.add_argument("--settings", nargs="+", default=SETTINGS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--verified", nargs="+", type=int, default=[50, 100, 200, 500])
    parser.add_argument("--limit", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--method", default="ce")
    parser.add_argument("--recompute", type=Path, default=None,
                        help="re-derive the intervals of a saved raw JSON with today's interval code "
                             "(same runs, no training)")
    args = parser.parse_args()
    if args.recompute is not None:
        raw = json.loads(args.recompute.read_text())
        raw["runs"] = [recompute(r) for r in raw["runs"]]
        raw["recomputed"] = command()
        write_section("coverage", render(raw), raw)
        return
    runs = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for dataset in args.datasets:
            manifest = materialise(dataset, args.limit)
            classes = len(pd.read_csv(manifest)["label"].unique())
            for setting in args.settings:
                kind, rate = setting.split(":")
                for seed in args.seeds:
                    for verified in args.verified:
                        sim = tmp / f"{dataset}-{kind}-{seed}-{verified}"
                        simulate(manifest, sim, kind, float(rate), seed=seed,
                                 trusted_per_class=max(1, verified // classes), trusted_sample=True,
                                 class_map=CIFAR_MAP if kind == "asymmetric" and dataset == "cifar10" else
                                 ("2:7,3:8,5:6,6:5,7:1" if kind == "asymmetric" else None))
                        result = audit(RunConfig(
                            dataset=str(sim / "noisy.csv"), trusted=str(sim / "trusted.csv"),
                            out=str(sim / "run"), method=args.method, epochs=args.epochs, seed=seed,
                            augment="crop-flip" if dataset == "cifar10" else "crop", report=False))
                        s = result.summary
                        e = s["estimates"]
                        t = truth_of(result.run_dir, sim)
                        decided = e.get("population", 0) + e.get("exam_rows", 0)
                        model_count = round(e.get("model_noise_rate", s["estimated_noise_rate"]) * e.get("population", 0))
                        row = {
                            "dataset": dataset, "setting": setting, "seed": seed, "verified": verified,
                            "exam_rows": e.get("exam_rows", 0), "exam_wrong": e.get("exam_wrong", 0),
                            "truth": t, "noise_rate": e.get("noise_rate"), "precision": e.get("precision"),
                            "recall": e.get("recall"), "flag_count_source": s["flag_count_source"],
                            "flagged": s["flagged"], "model_count": model_count, "decided": decided,
                            "rate_in": inside(t["rate"], e.get("noise_rate")),
                            "precision_in": inside(t["precision"], e.get("precision")),
                            "recall_in": inside(t["recall"], e.get("recall")),
                        }
                        runs.append(row)
                        print(f"{dataset} {setting} seed {seed} verified {verified}: exam "
                              f"{row['exam_rows']} true rate {t['rate']:.3f} in {row['rate_in']} "
                              f"P in {row['precision_in']} R in {row['recall_in']} flagged "
                              f"{s['flagged']} (model {model_count}) for {t['wrong']} wrong", flush=True)
    raw = {"command": command(), "machine": machine(), "args": vars(args), "runs": runs,
           "seconds": time.perf_counter() - started}
    write_section("coverage", render(raw), raw)


def recompute(run: dict) -> dict:
    """A saved run's intervals again, from its counts, with :func:`labelclean.exam.interval`
    as it is now (the flagged set is the saved one)."""
    from labelclean.exam import interval

    population = run["decided"] - run["exam_rows"]
    t = run["truth"]
    rate = run["noise_rate"]
    out = {**run, "noise_rate": interval(rate["k"], rate["n"], population)}
    out["precision"] = interval(run["precision"]["k"], run["precision"]["n"], run["flagged"])
    if run.get("recall"):
        k = run["exam_wrong"]
        out["recall"] = interval(run["recall"]["k"], run["recall"]["n"],
                                 round(k / run["exam_rows"] * population))
    out["rate_in"] = inside(t["rate"], out["noise_rate"])
    out["precision_in"] = inside(t["precision"], out["precision"])
    out["recall_in"] = inside(t["recall"], out.get("recall"))
    return out


def render(raw: dict) -> str:
    runs = raw["runs"]
    lines = [
        "## Estimates with intervals: coverage of the exam's 90% intervals",
        "",
        f"Command: `{raw['command']}` ({len(runs)} runs, {raw['seconds'] / 60:.0f} min on "
        f"{raw['machine']['cpu_count']} CPU cores). Verified rows are a random sample of the noisy "
        "manifest (`simulate --trusted-sample`); half of them (stratified) form the exam. "
        "Coverage: the share of runs whose stated interval holds the true value over the "
        "unverified rows (target: at least 85%). Width: median high − low."
        + (f" Intervals re-derived from the saved counts by `{raw['recomputed']}` (the finite-"
           "population correction; flagged sets as run)." if raw.get("recomputed") else ""),
        "",
        "| verified rows | runs | exam rows (median) | noise rate: coverage / width | precision: coverage / width | recall: coverage / width (runs estimable) |",
        "|---|---|---|---|---|---|",
    ]

    def cov(rows: list[dict], key: str, iv: str) -> str:
        vals = [r[key] for r in rows if r[key] is not None]
        widths = [r[iv]["high"] - r[iv]["low"] for r in rows if r.get(iv) and r[iv].get("estimate") is not None]
        if not vals:
            return "n/a"
        return f"{np.mean(vals):.0%} / {np.median(widths):.3f}" + (f" ({len(vals)})" if key == "recall_in" else "")

    for v in [*sorted({r["verified"] for r in runs}), "all"]:
        rows = runs if v == "all" else [r for r in runs if r["verified"] == v]
        lines.append(f"| {v} | {len(rows)} | {int(np.median([r['exam_rows'] for r in rows]))} | "
                     f"{cov(rows, 'rate_in', 'noise_rate')} | {cov(rows, 'precision_in', 'precision')} | "
                     f"{cov(rows, 'recall_in', 'recall')} |")
    lines += ["", "Flag count against the true number of wrong labels (median absolute error, "
              "unverified rows), by setting: the model's own estimate (before the exam) and the "
              "count the audit flags (the exam's rate where the model's estimate is outside its "
              "interval).", "",
              "| setting | runs | model's count: median abs. error | flagged: median abs. error | exam overrode the model |",
              "|---|---|---|---|---|"]
    for setting in sorted({r["setting"] for r in runs}):
        rows = [r for r in runs if r["setting"] == setting]
        model_err = np.median([abs(r["model_count"] - r["truth"]["wrong"]) for r in rows])
        flag_err = np.median([abs(r["flagged"] - r["truth"]["wrong"]) for r in rows])
        over = sum(r["flag_count_source"].startswith("exam") for r in rows)
        lines.append(f"| {setting} | {len(rows)} | {model_err:.0f} | {flag_err:.0f} | {over} of {len(rows)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
