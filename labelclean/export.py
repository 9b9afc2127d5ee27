"""``export``: corrected label files from a run, ready to audit again or to send to annotators."""

from __future__ import annotations

from pathlib import Path

from labelclean.errors import ConfigError
from labelclean.outputs import EXPORT_FORMATS, apply_policy, rewrite_paths, write_manifest
from labelclean.runs import Run


def export_labels(
    run_dir: Path,
    fmt: str | None = None,
    policy: str = "relabel",
    threshold: float | None = None,
    dest: Path | None = None,
) -> tuple[Path, int, int]:
    """Write the run's corrected manifest under ``policy``; return (path, rows changed, rows).

    The format defaults to the input's (CSV for image folders). Relative image paths are
    rewritten so they resolve from the written file's folder.
    """
    run = Run.open(Path(run_dir))
    kind = run.summary.get("input_kind", "csv")
    fmt = fmt or ("parquet" if kind == "parquet" else "csv")
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(EXPORT_FORMATS)}, found {fmt!r}")
    if threshold is not None and not 0 < threshold < 1:
        raise ConfigError(f"--threshold: expected a value in (0, 1), found {threshold}")
    label_column = "label" if kind == "folder" else run.config.label_column
    path_column = "path" if kind == "folder" else run.config.path_column
    frame, changed = apply_policy(run.corrected(), label_column, policy, threshold, run.label_values())
    dest = Path(dest) if dest else run.path / f"labels-{policy}.{fmt}"
    inputs = {Path(p).resolve() for p in (run.config.dataset, run.config.trusted) if p}
    if dest.resolve() in inputs:
        raise ConfigError(f"--out {dest}: would overwrite an input file of the audit; choose another path")
    frame[path_column] = rewrite_paths(frame[path_column].astype(object), run.path, dest.parent)
    write_manifest(frame, dest, fmt)
    return dest, changed, len(run.corrected())
