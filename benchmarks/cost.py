"""What the default costs against one plain training run, measured so that a busy machine does
not decide it: ``ce`` and ``auto`` audit the same noisy CIFAR-10 labels in turn, ``--repeats``
times each, and the ratio is taken of each method's fastest run (as ``timeit`` does: the
fastest run is the one the machine disturbed least) and of the medians.

    python benchmarks/cost.py [--setting flip-to-one:0.3] [--limit 2500] [--epochs 12] [--repeats 3]
        [--trusted-sample]

``--trusted-sample``: the trusted rows are a random sample of the noisy manifest, so the audit
has an exam (and ``auto``'s default trains the network on plain cross-entropy).

On a shared 2-core machine the same audit's wall time has drifted by up to 1.7x within a
session, so a single pair of runs can say 1.3x or 1.7x for the same code. The audits run in
this process, one after the other, nothing else running. Results go to docs/benchmarks.md
(section ``--section``, default ``cost``) and docs/benchmark-results/.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import command, machine, write_section
from noisy_sets import CIFAR_MAP, materialise

from labelclean import RunConfig, audit
from labelclean.simulate import simulate

METHODS = ("ce", "auto")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="flip-to-one:0.3")
    parser.add_argument("--limit", type=int, default=2500)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--section", default="cost")
    parser.add_argument("--trusted-sample", action="store_true",
                        help="the trusted rows are a random sample of the noisy manifest: the exam runs")
    args = parser.parse_args()
    manifest = materialise("cifar10", args.limit)
    kind, rate = args.setting.split(":")
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        simulate(manifest, tmp / "sim", kind, float(rate), seed=args.seed, trusted_per_class=10,
                 class_map=CIFAR_MAP if kind == "asymmetric" else None, trusted_sample=args.trusted_sample)
        for r in range(args.repeats):
            for method in METHODS:  # in turn, so a slow spell of the machine hits both
                config = RunConfig(dataset=str(tmp / "sim" / "noisy.csv"), trusted=str(tmp / "sim" / "trusted.csv"),
                                   out=str(tmp / method), method=method, augment="crop-flip", overwrite=True,
                                   epochs=args.epochs, seed=args.seed)
                wall, cpu = time.perf_counter(), time.process_time()
                result = audit(config)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                runs[method].append({"wall_seconds": wall, "cpu_seconds": cpu,
                                     "train_seconds": result.summary["timings"]["train_seconds"]})
                print(f"repeat {r + 1}: {method} {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    raw = {"command": command(), "machine": machine(), "setting": args.setting, "images": args.limit,
           "epochs": args.epochs, "trusted_sample": args.trusted_sample, "runs": runs}
    write_section(args.section, render(raw), raw)


def render(raw: dict) -> str:
    runs = raw["runs"]

    def stat(method: str, key: str, how) -> float:
        return how(r[key] for r in runs[method])

    lines = [f"## Cost of the default against one `ce` run ({raw['setting']}, {raw['images']} CIFAR-10 images, "
             f"{raw['epochs']} epochs{', with an exam' if raw.get('trusted_sample') else ''})", "",
             f"Command: `{raw['command']}`; machine: {raw['machine']['cpu_count']} CPU cores, torch "
             f"{raw['machine']['torch']}. `ce` and `auto` ran in turn; each row is one run.", "",
             "| repeat | ce wall s | auto wall s | ce CPU s | auto CPU s |", "|---|---|---|---|---|"]
    for i, (c, a) in enumerate(zip(runs["ce"], runs["auto"], strict=True)):
        lines.append(f"| {i + 1} | {c['wall_seconds']:.1f} | {a['wall_seconds']:.1f} | {c['cpu_seconds']:.1f} | "
                     f"{a['cpu_seconds']:.1f} |")
    lines += ["", "| measure | ce | auto | auto / ce |", "|---|---|---|---|"]
    for label, key, how in (("fastest wall", "wall_seconds", min), ("median wall", "wall_seconds", statistics.median),
                            ("fastest CPU", "cpu_seconds", min), ("median CPU", "cpu_seconds", statistics.median)):
        c, a = stat("ce", key, how), stat("auto", key, how)
        lines.append(f"| {label} | {c:.1f} s | {a:.1f} s | {a / c:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
