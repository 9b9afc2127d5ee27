"""Many exams over one audit: the noise-rate estimate and the flag count, replayed without training.

    python benchmarks/noisy_sets.py ... --trusted-sample --keep KEPT   # kept run folders
    python benchmarks/exam_replay.py KEPT/cifar10 KEPT/mnist [--exams 100] [--section NAME]

Every unverified row of a kept audit was trained on with its given label and scored blind,
exactly like an exam row, so any stratified draw of them (5 per true class, the exam that
``--trusted-sample``'s 10 verified rows per class give) is an exam the audit could have had. Per
draw, over the rows outside it, with the run's own ranking and ``P(wrong)``:

* the count the flag cut plans for: the model's alone; the rule before the prediction-powered
  rate (the model's count while the exam's Wilson interval holds it, else the exam's); and
  :func:`labelclean.exam.flag_count` of :func:`labelclean.exam.noise_rate` as the audit runs it;
* the F1 of the flagged set each count gives (:func:`labelclean.scoring.decide`, F1 cut planned
  with the exam's AUROC);
* the coverage and width of the exam's 90% noise-rate interval, Wilson against
  prediction-powered.

``--keep-wrong F`` thins a kept audit to a lower noise rate: each wrong label stays with
probability F (the rest of the rows are dropped from the replay), so the model, trained at the
higher rate, over-counts, as it did on the held-out set's lightest noise (8.9% wrong, 15.8%
estimated). A proxy: the model's scores are those of the heavier noise.

Reads ``<setting>-auto/scores.parquet`` and ``<setting>/truth.csv`` (``noisy_sets.py --keep``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import command, machine, write_section

from labelclean.exam import flag_count, interval, noise_rate, separation
from labelclean.scoring import decide

PER_CLASS = 5


def _f1(flagged: np.ndarray, wrong: np.ndarray) -> float:
    total = int(flagged.sum() + wrong.sum())
    return 2 * int((flagged & wrong).sum()) / total if total else 0.0


def old_rule(k: int, n: int, model: int, rows: int, population: int) -> int:
    """The flag count before the prediction-powered rate."""
    rate = interval(k, n, population)
    return model if rate["low"] <= model / rows <= rate["high"] else round(k / n * rows)


def replay(run: Path, truth_csv: Path, exams: int, seed: int = 0, keep_wrong: float = 1.0) -> dict:
    s = pd.read_parquet(run / "scores.parquet")
    truth = pd.read_csv(truth_csv).set_index("id").loc[s.sample_id, "label"].astype(str).to_numpy()
    free = ~s.verified.to_numpy()
    score, p = s.suspicion.to_numpy()[free], s.p_wrong.to_numpy()[free]
    wrong = (s.given_label.astype(str).to_numpy() != truth)[free]
    truth = truth[free]
    rng = np.random.default_rng(seed)
    if keep_wrong < 1:
        kept = ~wrong | (rng.random(len(wrong)) < keep_wrong)
        score, p, wrong, truth = score[kept], p[kept], wrong[kept], truth[kept]
    rows = len(score)
    confident = np.ones(rows, dtype=bool)
    out: dict[str, list] = {k: [] for k in ("model_err", "old_err", "new_err", "model_f1", "old_f1",
                                            "new_f1", "wilson_in", "wilson_w", "ppi_in", "ppi_w")}
    model = round(float(p.sum()))
    can_rank = 0
    for _ in range(exams):
        pick = np.concatenate([rng.choice(np.flatnonzero(truth == c), PER_CLASS, replace=False)
                               for c in np.unique(truth)])
        exam = np.zeros(rows, dtype=bool)
        exam[pick] = True
        rest_wrong = wrong[~exam]
        true_rate = float(rest_wrong.mean())
        k, n, population = int(wrong[exam].sum()), int(exam.sum()), int((~exam).sum())
        rate = noise_rate(wrong[exam], p[exam], p[~exam])
        can_rank += rate.get("method") is not None
        counts = {"model": model, "old": old_rule(k, n, model, rows, population),
                  "new": flag_count(rate, model, rows)[0]}
        sep = separation(wrong[exam], score[exam])
        for name, c in counts.items():
            out[f"{name}_err"].append(c / rows - true_rate)
            flagged = decide(score, confident, posterior=p, count=lambda _p, _e, c=c: (c, ""),
                             separation=sep).is_suspect
            out[f"{name}_f1"].append(_f1(flagged[~exam], rest_wrong))
        wilson = interval(k, n, population)
        for name, iv in (("wilson", wilson), ("ppi", rate)):
            out[f"{name}_in"].append(iv["low"] <= true_rate <= iv["high"])
            out[f"{name}_w"].append(iv["high"] - iv["low"])
    return {"rows": rows, "wrong": int(wrong.sum()), "exams": exams, "exams_that_rank": can_rank,
            "model_rate": float(p.mean()),
            **{k: float(np.mean(np.abs(v))) if k.endswith("_err") else float(np.mean(v))
               for k, v in out.items()},
            **{f"{k}_bias": float(np.mean(out[f"{k}_err"])) for k in ("model", "old", "new")}}


def render(raw: dict) -> str:
    lines = [f"Command: `{raw['command']}`; {raw['exams']} exams of {PER_CLASS} rows per true class "
             "per kept run; counts as a share of the rows (mean absolute error, and mean signed "
             "error in brackets); F1 of the flagged set over the rows outside the exam; the 90% "
             "interval's coverage of the true rate and its mean width.", "",
             "| run | setting | wrong (model's rate) | exams that rank | count error: model / before / now "
             "| F1: model / before / now | interval: Wilson coverage / width | now: coverage / width |",
             "|---|---|---|---|---|---|---|---|"]
    for r in raw["results"]:
        lines.append(
            f"| {r['run']} | {r['setting']} | {r['wrong'] / r['rows']:.1%} ({r['model_rate']:.1%}) | "
            f"{r['exams_that_rank']} | "
            f"{r['model_err']:.3f} ({r['model_bias']:+.3f}) / {r['old_err']:.3f} ({r['old_bias']:+.3f}) / "
            f"{r['new_err']:.3f} ({r['new_bias']:+.3f}) | {r['model_f1']:.3f} / {r['old_f1']:.3f} / "
            f"{r['new_f1']:.3f} | {r['wilson_in']:.2f} / {r['wilson_w']:.3f} | "
            f"{r['ppi_in']:.2f} / {r['ppi_w']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="noisy_sets.py --keep folders, one per dataset")
    parser.add_argument("--exams", type=int, default=100)
    parser.add_argument("--section", default=None, help="write this section of docs/benchmarks.md")
    parser.add_argument("--keep-wrong", type=float, default=1.0,
                        help="keep each wrong label with this probability (a lower noise rate)")
    parser.add_argument("--settings", nargs="*", default=None, help="only these settings")
    args = parser.parse_args()
    started = time.perf_counter()
    results = []
    for folder in args.folders:
        runs = sorted(folder.glob("*-auto/scores.parquet"))
        if not runs:
            print(f"skipping {folder}: no kept '<setting>-auto/scores.parquet' under it")
            continue
        for path in runs:
            setting = path.parent.name.removesuffix("-auto")
            if args.settings and setting not in args.settings:
                continue
            truth = folder / setting.replace(":", "_") / "truth.csv"
            if not truth.is_file():
                print(f"skipping {setting}: {truth} not found")
                continue
            r = {"run": str(folder), "setting": setting,
                 **replay(path.parent, truth, args.exams, keep_wrong=args.keep_wrong)}
            results.append(r)
            print(f"{folder} {setting}: count error {r['model_err']:.3f} / {r['old_err']:.3f} / "
                  f"{r['new_err']:.3f}, F1 {r['model_f1']:.3f} / {r['old_f1']:.3f} / {r['new_f1']:.3f}, "
                  f"coverage {r['wilson_in']:.2f} / {r['ppi_in']:.2f}, width {r['wilson_w']:.3f} / "
                  f"{r['ppi_w']:.3f}", flush=True)
    if not results:
        sys.exit("no kept runs found")
    raw = {"command": command(), "machine": machine(), "exams": args.exams, "results": results,
           "seconds": time.perf_counter() - started}
    if args.section:
        write_section(args.section, render(raw), raw)
    else:
        print(render(raw))


if __name__ == "__main__":
    main()
