"""The GPU path: audits on a CUDA device, fp32 against bf16, `ce` against `auto`.

    python benchmarks/gpu.py [--limit 5085] [--epochs 12] [--setting uniform:0.2]
        [--raw-out FILE] [--render FILE]

On the CIFAR-10 subset of ``../shared/data`` with injected noise (``labelclean simulate``, 10
trusted images per class): ``ce`` and ``auto`` on ``--device cuda`` in fp32 and bf16, ``ce``
on the CPU of the same machine for the speed-up, and ``auto`` in bf16 a second time with the
same seed to check that CUDA runs repeat exactly. Reported per run: wall seconds, training
images per second, peak GPU memory, AUROC, AP and F1 against the truth. Without a CUDA device or
the data the script says so and exits. The raw JSON goes to ``--raw-out`` (a GPU machine's
docs do not come back); ``--render`` writes docs/benchmarks.md's ``gpu`` section from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from common import command, fmt, machine, write_section
from noisy_sets import materialise

from labelclean import RunConfig, audit
from labelclean.evaluate import evaluate_run
from labelclean.simulate import simulate

RUNS = [("ce", "cpu", "fp32"), ("ce", "cuda", "fp32"), ("ce", "cuda", "bf16"),
        ("auto", "cuda", "fp32"), ("auto", "cuda", "bf16"), ("auto", "cuda", "bf16")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--setting", default="uniform:0.2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw-out", type=Path, default=None)
    parser.add_argument("--render", type=Path, default=None)
    args = parser.parse_args()
    if args.render:
        raw = json.loads(args.render.read_text())
        write_section("gpu", render(raw), raw)
        return
    if not torch.cuda.is_available():
        print("skipping: no CUDA device on this machine")
        sys.exit(0)
    manifest = materialise("cifar10", args.limit)
    raw: dict = {"command": command(), "machine": {**machine(), "gpu": torch.cuda.get_device_name()},
                 "setting": args.setting, "epochs": args.epochs, "runs": []}
    kind, rate = args.setting.split(":")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        report = simulate(manifest, tmp / "sim", kind, float(rate), seed=args.seed, trusted_per_class=10)
        raw["images"], raw["wrong"] = report["samples"], report["flipped"]
        scores = {}
        for i, (method, device, precision) in enumerate(RUNS):
            config = RunConfig(dataset=str(tmp / "sim" / "noisy.csv"), trusted=str(tmp / "sim" / "trusted.csv"),
                               out=str(tmp / f"run{i}"), method=method, device=device, precision=precision,
                               augment="crop-flip", epochs=args.epochs, seed=args.seed, overwrite=True)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            result = audit(config)
            wall = time.perf_counter() - start
            ev = evaluate_run(result.run_dir, tmp / "sim" / "truth.csv")
            timings = result.summary["timings"]
            row = {"method": method, "device": device, "precision": precision, "wall_seconds": wall,
                   "train_seconds": timings["train_seconds"],
                   "images_per_second": timings.get("train_images_per_second"),
                   "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
                   **{k: ev[k] for k in ("auroc", "ap", "f1", "flagged", "errors")}}
            key = (method, device, precision)
            if key in scores:  # the repeat: same seed, same device
                row["repeat_identical"] = bool(scores[key].equals(result.scores))
            scores[key] = result.scores
            raw["runs"].append(row)
            print(json.dumps(row), flush=True)
    if args.raw_out:
        args.raw_out.write_text(json.dumps(raw, indent=2, default=str) + "\n")
    write_section("gpu", render(raw), raw)


def render(raw: dict) -> str:
    m = raw["machine"]
    lines = [f"Audits on a GPU (`benchmarks/gpu.py`): CIFAR-10 subset, {raw['images']:,} images "
             f"({raw['wrong']:,} labels wrong, `{raw['setting']}`), {raw['epochs']} epochs, small_cnn at "
             f"32 px, `--augment crop-flip`, seed 0.", "",
             f"Command: `{raw['command']}`; machine: {m['gpu']}, {m['cpu_count']} CPU cores; torch "
             f"{m.get('torch', '?')}.", "",
             "| method | device | precision | wall s | train s | train images/s | peak GPU memory | "
             "AUROC | AP | F1 | flagged / errors | repeat identical |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in raw["runs"]:
        ips = "n/a" if r["images_per_second"] is None else f"{r['images_per_second']:,.0f}"
        gpu = "n/a" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.2f} GiB"
        repeat = {True: "yes", False: "no"}.get(r.get("repeat_identical"), "")
        lines.append(
            f"| {r['method']} | {r['device']} | {r['precision']} | {r['wall_seconds']:.1f} | "
            f"{r['train_seconds']:.1f} | {ips} | {gpu} | {fmt(r['auroc'])} | {fmt(r['ap'])} | "
            f"{fmt(r['f1'])} | {r['flagged']} / {r['errors']} | {repeat} |")
    return "\n".join(lines)


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
