"""Coverage of the exam's noise-rate interval from sampling alone (no training needed).

    python benchmarks/coverage_sampling.py [--runs 400]

The noise-rate interval rests only on which rows are verified and which of those form the
exam, so thousands of independent draws check it without training: ``simulate_labels`` with
``trusted_sample=True`` (a fresh seed per run), ``split_exam``, the Wilson interval, compared
with the noise rate of the unverified rows. MNIST subset labels from ../shared/data.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from common import SHARED_DATA

from labelclean.exam import interval, split_exam
from labelclean.simulate import simulate_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--no-correction", action="store_true",
                        help="the interval for an endless population (before the correction)")
    args = parser.parse_args()
    path = SHARED_DATA / "mnist_subset.npz"
    if not path.is_file():
        print(f"skipping: {path} not found")
        sys.exit(0)
    y = np.load(path)["y"][: args.rows]
    print("| noise | verified | runs | coverage |\n|---|---|---|---|")
    for kind, rate in (("uniform", 0.2), ("flip-to-one", 0.3)):
        for verified in (50, 100, 200, 500):
            hits = runs = 0
            for seed in range(args.runs):
                sim = simulate_labels(y, 10, kind, rate, seed, verified // 10, trusted_sample=True)
                exam = split_exam(sim.true, sim.trusted, 10, seed)
                if not exam.any():
                    continue
                rest = ~sim.trusted
                iv = interval(int((sim.noisy[exam] != sim.true[exam]).sum()), int(exam.sum()),
                              None if args.no_correction else int(rest.sum()))
                true = (sim.noisy[rest] != sim.true[rest]).mean()
                hits += iv["low"] <= true <= iv["high"]
                runs += 1
            print(f"| {kind} {rate} | {verified} | {runs} | {hits / runs:.1%} |")


if __name__ == "__main__":
    main()
