"""Shared helpers for benchmarks: machine info and writing a section of docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "docs" / "benchmark-results"  # raw JSON beside docs/benchmarks.md
SHARED_DATA = ROOT.parent / "shared" / "data"


def machine() -> dict:
    import torch

    from labelclean.pipeline import versions

    extra = {}
    try:
        import cleanlab

        extra["cleanlab"] = cleanlab.__version__
    except ImportError:
        pass
    return {
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        **versions(), **extra,
    }


def command() -> str:
    return "python " + shlex.join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def write_section(name: str, markdown: str, raw: dict) -> None:
    """Replace the ``name`` section of docs/benchmarks.md and write its raw JSON."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOCS.write_text(text)


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"
