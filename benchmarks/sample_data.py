"""Benchmark the audit on the shipped sample_data/ against its truth.csv.

    python benchmarks/sample_data.py --methods ce

Runs ``audit`` with the default settings (plus ``--augment crop``, as README does for digits)
for each method, evaluates against ``sample_data/truth.csv`` and writes the table into
docs/benchmarks.md (section ``sample_data``) and docs/benchmark-results/sample_data.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import ROOT, command, fmt, machine, write_section

from labelclean import RunConfig, audit
from labelclean.evaluate import evaluate_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=["ce", "mlc", "mslg", "ieg", "mlnt", "auto"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--meta-scope", choices=["head", "full"], default="head")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    data = ROOT / "sample_data"
    rows, raw = [], {"command": command(), "machine": machine(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            config = RunConfig(dataset=str(data / "digits"), trusted=str(data / "trusted.csv"),
                               out=str(Path(tmp) / method), method=method, augment="crop",
                               seed=args.seed, meta_scope=args.meta_scope, epochs=args.epochs)
            start = time.perf_counter()
            result = audit(config)
            wall = time.perf_counter() - start
            ev = evaluate_run(result.run_dir, data / "truth.csv", id_column="folder_id")
            t = result.summary["timings"]
            raw["runs"][method] = {"evaluation": ev, "summary": result.summary, "wall_seconds": wall}
            rows.append((method, ev, t, wall))
            print(f"{method}: F1 {ev['f1']:.3f} AUROC {ev['auroc']:.3f} wall {wall:.1f}s", flush=True)
    base = next((w for m, _, _, w in rows if m == "ce"), None)
    lines = [
        f"## sample_data, meta scope {args.meta_scope} (scikit-learn digits, 1,797 images, "
        f"90 flipped labels, {rows[0][1]['errors']} of them outside the 100 trusted rows)",
        "",
        f"Command: `{raw['command']}`; machine: {raw['machine']['cpu_count']} CPU cores, "
        f"torch {raw['machine']['torch']}. Default settings: image size "
        f"{raw['runs'][rows[0][0]]['summary']['image_size']}, "
        f"{raw['runs'][rows[0][0]]['summary']['epochs']} epochs, small_cnn, `--augment crop`.",
        "",
        "| method | AUROC | AP | precision | recall | F1 | flagged / errors | label acc. before -> after | "
        "train img/s | wall s | time vs ce |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, ev, t, wall in rows:
        rel = fmt(wall / base, 2) if base else "n/a"
        lines.append(
            f"| {method} | {fmt(ev['auroc'])} | {fmt(ev['ap'])} | {fmt(ev['precision'])} | "
            f"{fmt(ev['recall'])} | {fmt(ev['f1'])} | {ev['flagged']} / {ev['errors']} | "
            f"{fmt(ev['label_accuracy_before'])} -> {fmt(ev['label_accuracy_after_relabel'])} | "
            f"{t['train_images_per_second']:.0f} | {wall:.1f} | {rel} |"
        )
    name = "sample_data" if args.meta_scope == "head" else "sample_data_full"
    write_section(name, "\n".join(lines), raw)


if __name__ == "__main__":
    main()
