"""``audit``: from a dataset and a trusted set to ranked suspects and a corrected manifest."""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from labelclean import __version__
from labelclean.config import RunConfig
from labelclean.data.dataset import Samples, label_text, load_samples, raise_problems
from labelclean.data.images import decode_images
from labelclean.errors import ConfigError, DataError
from labelclean.io import write_json, write_table
from labelclean.methods import METHODS
from labelclean.outputs import (
    ACTION, GIVEN, IS_SUSPECT, P_WRONG, PATH, RANK, SAMPLE_ID, SUGGESTED, SUSPICION, VERIFIED,
    added_names, ranks, rewrite_paths,
)
from labelclean.progress import Reporter
from labelclean.scoring import ALTERNATIVE_SHARE, alternative, decide, transition_from_labels
from labelclean.train import train

#: Up to this fraction of unreadable images is skipped with a warning (``--strict``: none).
MAX_SKIP_FRACTION = 0.05
OUTPUT_FILES = ("scores.csv", "scores.parquet", "summary.json", "config.json")


@dataclass
class AuditResult:
    run_dir: Path
    scores: pd.DataFrame
    summary: dict[str, Any]
    config: RunConfig
    transition: pd.DataFrame
    notices: list[str] = field(default_factory=list)


def default_run_dir(dataset: Path) -> Path:
    stem = dataset.stem if dataset.is_file() else dataset.resolve().name
    base = Path("labelclean-runs") / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir, k = base, 1
    while run_dir.exists():
        k += 1
        run_dir = base.with_name(f"{base.name}-{k}")
    return run_dir


def fit_image_size(paths: list[str], backbone: str) -> int:
    """Median shorter side of up to 200 images, clamped to [16, 64] (224 for ResNets)."""
    if backbone.startswith("resnet"):
        return 224
    sides = []
    for p in paths[:: max(1, len(paths) // 200)][:200]:
        try:
            with Image.open(p) as img:
                sides.append(min(img.size))
        except (OSError, ValueError):
            continue
    side = statistics.median(sides) if sides else 32
    return int(min(64, max(16, round(side / 8) * 8)))


def fit_epochs(num_samples: int) -> int:
    """About 100,000 image visits, between 10 and 30 epochs."""
    return int(min(30, max(10, round(100_000 / max(1, num_samples)))))


def fit_batch_size(num_samples: int) -> int:
    """128, smaller for tiny datasets so that an epoch has at least 8 steps."""
    return int(min(128, max(8, num_samples // 8)))


def resolve_config(config: RunConfig, samples: Samples) -> RunConfig:
    """Fill the "fit to data" settings and make paths absolute."""
    paths = samples.table["abs_path"].tolist()
    return config.replace(
        dataset=str(Path(config.dataset).resolve()),
        trusted=str(Path(config.trusted).resolve()) if config.trusted else None,
        image_size=config.image_size or fit_image_size(paths, config.backbone),
        epochs=config.epochs or fit_epochs(len(samples)),
        batch_size=config.batch_size or fit_batch_size(len(samples)),
    )


def _prepare_run_dir(config: RunConfig, samples: Samples) -> Path:
    run_dir = Path(config.out) if config.out else default_run_dir(Path(config.dataset))
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir}: expected a folder, found a file")
    if (run_dir / "config.json").exists() and not (config.resume or config.overwrite):
        raise ConfigError(
            f"--out {run_dir}: holds an earlier run; pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    inputs = {Path(samples.input.source).resolve()}
    if samples.trusted_path:
        inputs.add(samples.trusted_path.resolve())
    for name in (*OUTPUT_FILES, "corrected.csv", "corrected.parquet", "skipped.csv"):
        if (run_dir / name).resolve() in inputs:
            raise ConfigError(f"--out {run_dir}: would overwrite input file {name}; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _where(samples: Samples, i: int) -> str:
    row = samples.table.iloc[i]
    if row["source"] == "trusted":
        return f"{row['abs_path']} (trusted set)"
    if samples.input.kind == "folder":
        return str(row["abs_path"])
    return f"{row['abs_path']} ({samples.input.source.name} row {int(row['row']) + 1})"


def _handle_failures(
    samples: Samples, failures: dict[int, str], strict: bool, run_dir: Path, reporter: Reporter
) -> np.ndarray:
    """Error out, or skip a few unreadable images with a warning and ``skipped.csv``."""
    keep = np.ones(len(samples), dtype=bool)
    if not failures:
        return keep
    problems = [f"{_where(samples, i)}: {reason}" for i, reason in failures.items()]
    limit = 0 if strict else int(MAX_SKIP_FRACTION * len(samples))
    if len(failures) > limit:
        if not strict:
            problems.append(
                f"{len(failures)} of {len(samples)} images unreadable; at most "
                f"{MAX_SKIP_FRACTION:.0%} are skipped (fix them, or remove those rows)"
            )
        raise_problems(problems)
    keep[list(failures)] = False
    table = samples.table.iloc[list(failures)]
    skipped = pd.DataFrame({
        SAMPLE_ID: table["sample_id"], PATH: table["path"], "row": table["row"] + 1,
        "reason": list(failures.values()),
    })
    write_table(run_dir / "skipped.csv", skipped)
    reporter.notice(
        f"skipped {len(failures)} unreadable image(s), listed in {run_dir / 'skipped.csv'} "
        "(--strict makes this an error)"
    )
    return keep


def _check_classes(samples: Samples) -> None:
    present = set(samples.table.loc[samples.table["source"] == "dataset", "label_index"])
    empty = [c for i, c in enumerate(samples.classes) if i not in present]
    if empty:
        raise DataError(
            f"{samples.input.source}: class(es) {', '.join(map(repr, empty))} have no readable "
            "images; every class needs at least one"
        )


def versions() -> dict[str, str]:
    import torchvision

    return {
        "labelclean": __version__, "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "numpy": np.__version__, "pandas": pd.__version__,
    }


def audit(config: RunConfig, reporter: Reporter | None = None) -> AuditResult:
    """Run an audit end to end and write its outputs into the run folder.

    Validates the inputs before any training, trains ``config.method``, scores every sample,
    and writes ``scores.csv``/``.parquet``, ``corrected.csv``/``.parquet``,
    ``transition_matrix.csv``, ``summary.json``, ``config.json`` (and ``skipped.csv``).
    """
    reporter = reporter or Reporter()
    started = time.perf_counter()
    config.validate()
    method_cls = METHODS.get(config.method)
    method = method_cls(**config.method_options)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)

    samples = load_samples(
        Path(config.dataset), Path(config.trusted) if config.trusted else None,
        config.path_column, config.label_column, config.id_column,
    )
    run_dir = _prepare_run_dir(config, samples)
    config = resolve_config(config, samples)
    write_json(run_dir / "config.json", config.to_dict())
    assert config.image_size is not None

    t0 = time.perf_counter()
    with reporter.task("decoding images", len(samples)) as advance:
        pixels, failures = decode_images(samples.table["abs_path"].tolist(), config.image_size, advance)
    keep = _handle_failures(samples, failures, config.strict, run_dir, reporter)
    all_samples = samples
    samples = samples.subset(keep)
    pixels = pixels[torch.from_numpy(keep)]
    _check_classes(samples)
    decode_seconds = time.perf_counter() - t0

    notes: list[str] = []
    verified = samples.verified
    if not verified.any():
        note = (
            "no trusted set given: scores come from the model's own training signal; "
            "methods that need verified labels (mlc, mslg, ieg) will select their own "
            "reference samples, which are not verified"
        )
        if method_cls.needs_trusted:
            note += f"; method {config.method!r} uses such picks instead of a trusted set"
        reporter.notice(note)
        notes.append(note)

    result = train(
        config, pixels, torch.from_numpy(samples.targets), torch.from_numpy(verified),
        samples.sample_ids, len(samples.classes), method, run_dir, reporter,
    )
    evidence = result.evidence
    notes.extend(evidence.summary.get("notes", []))

    scores, transition, summary_extra = _score(samples, evidence, config)
    write_table(run_dir / "scores.csv", scores)
    write_table(run_dir / "scores.parquet", scores)
    write_table(run_dir / "transition_matrix.csv", transition.reset_index())
    corrected_name = _write_corrected(samples, scores, run_dir)
    for name, values in evidence.arrays.items():
        table = pd.DataFrame(values, columns=samples.classes)
        table.insert(0, SAMPLE_ID, samples.table["sample_id"].to_numpy())
        write_table(run_dir / f"{name}.parquet", table)

    summary = {
        "labelclean_version": __version__,
        "method": config.method,
        "dataset": config.dataset,
        "input_kind": samples.input.kind,
        "rows": int((all_samples.table["source"] == "dataset").sum()),
        "samples_scored": int((~verified).sum()),
        "verified": int(verified.sum()),
        "trusted_added": int((samples.table["source"] == "trusted").sum()),
        "skipped": len(failures),
        "classes": samples.classes,
        **summary_extra,
        "epochs": config.epochs,
        "image_size": config.image_size,
        "batch_size": config.batch_size,
        "resumed_from_epoch": result.resumed_from_epoch,
        "timings": {
            "decode_seconds": round(decode_seconds, 3),
            "train_seconds": round(result.seconds, 3),
            "total_seconds": round(time.perf_counter() - started, 3),
            "train_images_per_second": round(result.images_per_second, 1),
        },
        "method_summary": {k: v for k, v in evidence.summary.items() if k != "notes"},
        "notes": notes,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "outputs": sorted([*OUTPUT_FILES, "transition_matrix.csv", corrected_name]
                          + [f"{name}.parquet" for name in evidence.arrays]
                          + (["skipped.csv"] if failures else [])),
        "versions": versions(),
        "config": config.to_dict(),
    }
    write_json(run_dir / "summary.json", summary)
    if config.report:
        from labelclean.html_report import build_report

        build_report(run_dir)
        summary["outputs"] = sorted([*summary["outputs"], "report.html"])
        write_json(run_dir / "summary.json", summary)
    return AuditResult(run_dir, scores, summary, config, transition, reporter.notices)


def _score(
    samples: Samples, evidence: Any, config: RunConfig
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    table = samples.table
    classes = np.array(samples.classes, dtype=object)
    given = table["label_index"].to_numpy()
    verified = samples.verified
    suspicion = np.asarray(evidence.suspicion, dtype=np.float64).copy()
    suggested = np.asarray(evidence.suggested, dtype=np.int64).copy()
    free = ~verified
    alt, share = alternative(np.asarray(evidence.belief), given)
    p_wrong = None if evidence.p_wrong is None else np.asarray(evidence.p_wrong)[free]
    strong = None if evidence.strong is None else np.asarray(evidence.strong)[free]
    decision = decide(suspicion[free], share[free] >= ALTERNATIVE_SHARE, config.threshold, p_wrong,
                      strong)

    posterior = np.zeros(len(table))
    posterior[free] = decision.posterior
    is_suspect = np.zeros(len(table), dtype=bool)
    is_suspect[free] = decision.is_suspect
    relabel = np.zeros(len(table), dtype=bool)
    relabel[free] = decision.relabel
    # A flagged sample's label is judged wrong: suggest the best other class.
    suggested = np.where(is_suspect, alt, suggested)
    # A verified sample is never a suspect: its label is known.
    suspicion[verified] = 0.0
    suggested[verified] = samples.targets[verified]
    action = np.where(relabel, "relabel", np.where(is_suspect, "review", "keep")).astype(object)
    action[verified] = "verified"

    scores = pd.DataFrame({
        SAMPLE_ID: table["sample_id"].to_numpy(),
        PATH: table["path"].to_numpy(),
        GIVEN: table["label"].to_numpy(),
        SUGGESTED: classes[suggested],
        SUSPICION: suspicion.round(6),
        IS_SUSPECT: is_suspect,
        RANK: ranks(suspicion, free),
        ACTION: action,
        VERIFIED: verified,
        P_WRONG: posterior.round(6),
    })
    for name, values in evidence.columns.items():
        col = np.asarray(values).copy()
        if col.dtype.kind == "f":
            col = col.round(6)
        scores[name] = col

    final = np.where(is_suspect | verified, suggested, given)
    if evidence.transition is not None:
        t = np.asarray(evidence.transition)
        source = "method"
    else:
        t = transition_from_labels(final[free | verified], given[free | verified], len(classes))
        source = "suggestions"
    transition = pd.DataFrame(t, index=pd.Index(samples.classes, name="true\\given"),
                              columns=samples.classes)
    per_class = {}
    for k, name in enumerate(samples.classes):
        mask = free & (given == k)
        per_class[name] = round(float(posterior[mask].mean()), 4) if mask.any() else 0.0
    extra = {
        "flagged": int(is_suspect.sum()),
        "relabel": int(relabel.sum()),
        "review": int((is_suspect & ~relabel).sum()),
        "verified_corrections": int((verified & (samples.targets != given)).sum()),
        "threshold": round(decision.threshold, 6),
        "relabel_threshold": round(decision.relabel_threshold, 6),
        "threshold_method": decision.threshold_method,
        "estimated_noise_rate": round(float(posterior[free].mean()), 4) if free.any() else 0.0,
        "estimated_noise_rate_per_class": per_class,
        "transition_source": source,
    }
    return scores, transition, extra


def _write_corrected(samples: Samples, scores: pd.DataFrame, run_dir: Path) -> str:
    """Every input row and column, plus suggestion, suspicion, flag and action.

    ``samples`` are the scored samples; input rows missing from them (unreadable images) are
    kept with action ``skipped``.
    """
    inp = samples.input
    frame = inp.frame.copy()
    frame[inp.path_column] = rewrite_paths(frame[inp.path_column].astype(object), inp.base_dir, run_dir)
    names = added_names(list(frame.columns))
    dataset = (samples.table["source"] == "dataset").to_numpy()
    pick = scores[dataset].set_index(samples.table.loc[dataset, "row"].to_numpy()).reindex(
        np.arange(len(frame)))
    known = pick[SAMPLE_ID].notna().to_numpy()
    given = frame[inp.label_column].map(label_text).to_numpy()
    frame[names[SUGGESTED]] = np.where(known, pick[SUGGESTED].to_numpy(), given)
    frame[names[SUSPICION]] = pick[SUSPICION].to_numpy()
    frame[names[IS_SUSPECT]] = np.where(known, pick[IS_SUSPECT].to_numpy(), False).astype(bool)
    frame[names[ACTION]] = np.where(known, pick[ACTION].to_numpy(), "skipped")
    name = "corrected.parquet" if inp.kind == "parquet" else "corrected.csv"
    write_table(run_dir / name, frame)
    return name
