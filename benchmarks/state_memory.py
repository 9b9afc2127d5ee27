"""Memory of each method's per-sample state at a million rows, by number of classes.

    python benchmarks/state_memory.py [--rows 1000000] [--classes 10 1000] [--methods ce auto ...]
        [--through-scoring]

For each method and class count, a child process builds the method on a tiny network and an
``N``-row context (no images, no training: the state is allocated in ``setup`` and keeps its
size), then reports the bytes held in tensors with one row per sample (each tensor counted
once) and the process's peak resident memory above its baseline (``ru_maxrss``; this also
counts what ``setup`` allocated and let go). With ``--through-scoring`` the child then draws
the method's evidence from that state (every row marked visited once, as after training) and
decides every row with
:func:`labelclean.scoring.score`, and reports the peak after each: the memory of an audit's
last stages, where the per-sample tables meet the dense beliefs. Run it against another checkout with
``PYTHONPATH=/that/checkout`` to compare versions. Synthetic; nothing is learned from data.
Results go to docs/benchmarks.md (section ``state_memory``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from common import command, machine, write_section


def _held_bytes(obj: object, rows: int, seen: set[int], depth: int = 0) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        if obj.ndim and obj.shape[0] == rows and obj.untyped_storage().data_ptr() not in seen:
            seen.add(obj.untyped_storage().data_ptr())
            return obj.untyped_storage().nbytes()
        return 0
    if depth > 4 or isinstance(obj, (str, bytes, int, float, torch.nn.Module, torch.Generator)):
        return 0
    if isinstance(obj, dict):
        return sum(_held_bytes(v, rows, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_held_bytes(v, rows, seen, depth + 1) for v in obj[:64])
    if hasattr(obj, "__dict__"):
        return sum(_held_bytes(v, rows, seen, depth + 1) for k, v in vars(obj).items() if k != "ctx")
    return 0


def _row_means(obj: object, depth: int = 0) -> list:
    """The running-mean tables a method holds (its own and its members')."""
    from labelclean.methods.state import RowMeans

    if isinstance(obj, RowMeans):
        return [obj]
    if depth > 4 or (not hasattr(obj, "__dict__") and not isinstance(obj, dict)):
        return []
    values = obj.values() if isinstance(obj, dict) else vars(obj).values()
    return [t for v in values if not isinstance(v, (str, bytes)) for t in _row_means(v, depth + 1)]


def child(method: str, rows: int, classes: int, through_scoring: bool = False) -> dict:
    import torch

    from labelclean.config import RunConfig
    from labelclean.methods import METHODS, TrainContext
    from labelclean.models import build_backbone

    torch.manual_seed(0)
    model = build_backbone("test_tiny", classes)
    labels = torch.arange(rows) % classes
    verified = torch.zeros(rows, dtype=torch.bool)
    verified[: 10 * classes] = True
    pixels = torch.zeros(64, 3, 8, 8)
    config = RunConfig(dataset="unused", method=method, epochs=2, batch_size=64)
    ids = [f"s{i}" for i in range(rows)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ctx = TrainContext(model=model, num_classes=classes, labels=labels, verified=verified,
                       sample_ids=ids, epochs=2, steps_per_epoch=rows // 64, batch_size=64,
                       generator=torch.Generator().manual_seed(0), device=torch.device("cpu"),
                       config=config, load=lambda r, aug: pixels[: len(r)], notice=lambda m: None)
    m = METHODS.get(method).build({})
    m.setup(ctx)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    held = _held_bytes(m, rows, {labels.untyped_storage().data_ptr(), verified.untyped_storage().data_ptr()})
    out = {"held_gib": round(held / 2**30, 3), "peak_above_baseline_gib": round((peak - base) / 2**20, 3)}
    if through_scoring:
        from labelclean.scoring import score

        for table in _row_means(m):  # every row visited once, as after training
            table.count.fill_(1.0)
        evidence = m.evidence()
        out["evidence_peak_gib"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20, 3)
        given = labels.numpy()
        score(evidence, given, verified.numpy(), given)
        out["score_peak_gib"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", nargs="*", type=int, default=[10, 1000])
    parser.add_argument("--methods", nargs="*", default=["ce", "mlc", "mslg", "ieg", "mlnt", "auto"])
    parser.add_argument("--label", default="this version")
    parser.add_argument("--section", default="state_memory")
    parser.add_argument("--through-scoring", action="store_true",
                        help="also draw the evidence and score every row; report the peaks")
    parser.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--merge", type=Path, default=None, help="add to this saved raw JSON")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), int(args.child[2]), args.child[3] == "1")))
        return
    raw = json.loads(args.merge.read_text()) if args.merge else {"runs": {}}
    raw.update({"command": command(), "machine": machine(), "rows": args.rows})
    for c in args.classes:
        for name in args.methods:
            proc = subprocess.run([sys.executable, __file__, "--child", name, str(args.rows), str(c),
                                   "1" if args.through_scoring else "0"],
                                  capture_output=True, text=True, env=os.environ)
            result = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                      else {"error": (proc.stderr.strip().splitlines() or ["killed"])[-1][:200]})
            raw["runs"].setdefault(args.label, {}).setdefault(str(c), {})[name] = result
            print(args.label, c, name, result, flush=True)
    write_section(args.section, render(raw), raw)


def _failure(error: str) -> str:
    if "allocate" in error or "MemoryError" in error:
        return "out of memory"
    return f"failed: {error[:40]}"


def render(raw: dict) -> str:
    methods = list(next(iter(next(iter(raw["runs"].values())).values())))
    lines = [f"Per-sample state of each method at {raw['rows']:,} rows (`benchmarks/state_memory.py`): "
             "bytes held in per-row tensors after `setup`, and the process's peak resident memory "
             "above its baseline (what `setup` allocated, kept or not).", "",
             f"Command: `{raw['command']}`", "",
             "| version | classes | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for label, by_c in raw["runs"].items():
        for c, by_m in by_c.items():
            cells = [(f"{r['held_gib']:.2f} / {r['peak_above_baseline_gib']:.2f} GiB" if "error" not in r
                      else _failure(r["error"])) for r in (by_m.get(m, {"error": "not run"})
                                                                   for m in methods)]
            lines.append(f"| {label} | {int(c):,} | " + " | ".join(cells) + " |")
    lines += ["", "Each cell: held / peak above baseline."]
    scored = [(label, c, by_m) for label, by_c in raw["runs"].items() for c, by_m in by_c.items()
              if any("score_peak_gib" in r or "error" in r for r in by_m.values())]
    if scored:
        lines += ["", "Through scoring (`--through-scoring`): the evidence drawn from that state and every "
                  "row decided by `labelclean.scoring.score`; peak resident memory above the baseline "
                  "after the evidence / after scoring.", "",
                  "| version | classes | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
        for label, c, by_m in scored:
            cells = [(f"{r['evidence_peak_gib']:.2f} / {r['score_peak_gib']:.2f} GiB" if "score_peak_gib" in r
                      else _failure(r.get("error", "not run")))
                     for r in (by_m.get(m, {"error": "not run"}) for m in methods)]
            lines.append(f"| {label} | {int(c):,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
