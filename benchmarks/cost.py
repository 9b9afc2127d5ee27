"""What the default costs against one plain training run, measured so that a busy machine does
not decide it: ``ce`` and ``auto`` audit the same noisy CIFAR-10 labels in turn, ``--repeats``
times each, and the ratio is taken of each method's fastest run (as ``timeit`` does: the
fastest run is the one the machine disturbed least) and of the medians.

    python benchmarks/cost.py [--setting flip-to-one:0.3] [--limit 2500] [--epochs 12] [--repeats 3]
        [--trusted-sample] [--variant "NAME=option=value[,option=value]"]

``--trusted-sample``: the trusted rows are a random sample of the noisy manifest, so the audit
has an exam (and ``auto``'s default trains the network on plain cross-entropy).
``--variant``: one more ``auto`` audit per repeat, with these ``--option`` values (e.g.
``"every batch=bystander_every=1"``), timed in the same turn as ``ce`` and the default.

On a shared 2-core machine the same audit's wall time has drifted by up to 1.7x within a
session, so a single pair of runs can say 1.3x or 1.7x for the same code. The audits run in
this process, one after the other, nothing else running. Results go to docs/benchmarks.md
(section ``--section``, default ``cost``) and docs/benchmark-results/.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=option=value[,option=value]: one more auto audit per repeat")
    parser.add_argument("--render", type=Path, default=None,
                        help="re-render a saved raw JSON into --section (no runs)")
    args = parser.parse_args()
    if args.render is not None:
        raw = json.loads(args.render.read_text())
        write_section(args.section, render(raw), raw)
        return
    variants: dict[str, dict[str, str]] = {}
    for spec in args.variant:
        name, _, options = spec.partition("=")
        variants[f"auto ({name})"] = dict(o.split("=", 1) for o in options.split(",") if o)
    manifest = materialise("cifar10", args.limit)
    kind, rate = args.setting.split(":")
    runs: dict[str, list[dict]] = {m: [] for m in (*METHODS, *variants)}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        simulate(manifest, tmp / "sim", kind, float(rate), seed=args.seed, trusted_per_class=10,
                 class_map=CIFAR_MAP if kind == "asymmetric" else None, trusted_sample=args.trusted_sample)
        for r in range(args.repeats):
            for method in runs:  # in turn, so a slow spell of the machine hits every one
                options = variants.get(method, {})
                config = RunConfig(dataset=str(tmp / "sim" / "noisy.csv"), trusted=str(tmp / "sim" / "trusted.csv"),
                                   out=str(tmp / "run"), method="ce" if method == "ce" else "auto",
                                   augment="crop-flip", overwrite=True, epochs=args.epochs, seed=args.seed,
                                   method_options=options)
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
             f"{raw['machine']['torch']}. {', '.join(f'`{m}`' for m in runs)} ran in turn; each row is "
             "one turn (wall / CPU seconds).", "",
             "| repeat | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for i in range(len(runs["ce"])):
        lines.append(f"| {i + 1} | " + " | ".join(f"{runs[m][i]['wall_seconds']:.1f} / {runs[m][i]['cpu_seconds']:.1f}"
                                                  for m in runs) + " |")
    others = [m for m in runs if m != "ce"]
    lines += ["", "| measure | ce | " + " | ".join(others) + " | " + " | ".join(f"{m} / ce" for m in others) + " |",
              "|---" * (2 + 2 * len(others)) + "|"]
    for label, key, how in (("fastest wall", "wall_seconds", min), ("median wall", "wall_seconds", statistics.median),
                            ("fastest CPU", "cpu_seconds", min), ("median CPU", "cpu_seconds", statistics.median)):
        c = stat("ce", key, how)
        values = [stat(m, key, how) for m in others]
        lines.append(f"| {label} | {c:.1f} s | " + " | ".join(f"{v:.1f} s" for v in values) + " | "
                     + " | ".join(f"{v / c:.2f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
