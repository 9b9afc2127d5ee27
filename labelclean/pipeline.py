"""The audit pipeline (``labelclean.audit``): from a dataset and a trusted set to a run folder.

Orchestration only: reading and validating (:mod:`labelclean.data`), training
(:mod:`labelclean.train`), deciding (:mod:`labelclean.scoring`) and writing
(:mod:`labelclean.run.writer`) each live in their own module.
"""

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

from labelclean.config import RunConfig
from labelclean.data.dataset import Samples, load_samples, raise_problems
from labelclean.data.images import DEFAULT_MAX_PIXELS, LARGE_PIXELS, decode_cached
from labelclean.errors import ConfigError, DataError
from labelclean.exam import (
    MIN_EXAM,
    MIN_REFERENCE_PER_CLASS,
    PREDICTION_POWERED,
    can_rank,
    model_check,
    representativeness,
    says_light,
    split_exam,
)
from labelclean.io import write_json, write_table
from labelclean.methods import METHODS, Method
from labelclean.progress import Reporter, Stopwatch
from labelclean.run import schema as S
from labelclean.run.writer import (
    clear_run,
    run_files,
    scores_frame,
    write_arrays,
    write_corrected,
    write_scores,
    write_transition,
)
from labelclean.scoring import Evidence, Scored, probs_evidence, score, transition_from_labels
from labelclean.train import train
from labelclean.version import __version__

#: Up to this fraction of unreadable images is skipped with a warning (``--strict``: none).
MAX_SKIP_FRACTION = 0.05


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
    if backbone.startswith("resnet") or ":" in backbone:
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


#: Image visits (samples times epochs) a network trained from scratch gets by default. On
#: CIFAR-10 at 5,085 images a plain run's ranking of human-like wrong labels rose from 20 epochs
#: (100,000 visits) to 30 and 40 (AUROC 0.787 -> 0.813 -> 0.820 at 20% wrong; docs/benchmarks.md,
#: "Training longer").
SCRATCH_VISITS = 160_000
#: The same for pretrained weights and fixed vectors (not measured at other lengths here).
PRETRAINED_VISITS = 100_000
#: The default epochs stay within these bounds.
EPOCH_BOUNDS = (10, 30)


def fit_epochs(num_samples: int, from_scratch: bool = True) -> int:
    """:data:`SCRATCH_VISITS` image visits (:data:`PRETRAINED_VISITS` for a network that starts
    from pretrained weights or trains on vectors), within :data:`EPOCH_BOUNDS` epochs."""
    visits = SCRATCH_VISITS if from_scratch else PRETRAINED_VISITS
    low, high = EPOCH_BOUNDS
    return int(min(high, max(low, round(visits / max(1, num_samples)))))


def trains_from_scratch(config: RunConfig) -> bool:
    """Whether the audit trains a network on pixels from random weights (the default
    ``small_cnn``, or a registered backbone without ``--weights``)."""
    from labelclean.models.pretrained import is_pretrained_name

    return trains_on_pixels(config) and not (config.weights or is_pretrained_name(config.backbone))


def trains_on_pixels(config: RunConfig) -> bool:
    """Whether the network's input is decoded pixels (not ``--features``/``--pred-probs``
    vectors, nor a pretrained encoder's embeddings computed once, :func:`embeds`)."""
    return not (config.features or config.pred_probs or embeds(config))


def fit_batch_size(num_samples: int, vectors: bool = False) -> int:
    """128 images (1,024 vectors: a linear head's step is cheap, the step count is not),
    smaller for tiny datasets so that an epoch has at least 8 steps."""
    return int(min(1024 if vectors else 128, max(8, num_samples // 8)))


def resolve_config(config: RunConfig, samples: Samples) -> RunConfig:
    """Fill the "fit to data" settings and make paths absolute."""
    pixels = trains_on_pixels(config)
    paths = samples.table[S.ABS_PATH].tolist()
    absolute = {k: str(Path(v).resolve()) for k in ("features", "pred_probs")
                if (v := getattr(config, k))}
    return config.replace(
        dataset=str(Path(config.dataset).resolve()),
        trusted=str(Path(config.trusted).resolve()) if config.trusted else None,
        image_size=config.image_size or (fit_image_size(paths, config.backbone) if pixels else None),
        epochs=config.epochs or fit_epochs(len(samples), trains_from_scratch(config)),
        batch_size=config.batch_size or fit_batch_size(len(samples), vectors=not pixels),
        finetune=config.finetune or ("none" if embeds(config) else "full"),
        **absolute,
    )


def _prepare_run_dir(config: RunConfig, samples: Samples) -> Path:
    run_dir = Path(config.out) if config.out else default_run_dir(Path(config.dataset))
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir}: expected a folder, found a file")
    inputs = {Path(samples.input.source).resolve()}
    if samples.trusted_path:
        inputs.add(samples.trusted_path.resolve())
    if samples.input.kind == "folder":
        root = Path(samples.input.source).resolve()
        if run_dir.resolve() == root or root in run_dir.resolve().parents:
            raise ConfigError(f"--out {run_dir}: is inside the image folder {samples.input.source}, "
                              "where the next audit would read it as a class; choose a folder outside")
    earlier = run_files(run_dir) if run_dir.is_dir() else []
    if earlier and not (config.resume or config.overwrite):
        raise ConfigError(
            f"--out {run_dir}: holds an earlier run ({earlier[0].name}); pass --resume to continue "
            "it, --overwrite to replace it, or choose another --out"
        )
    clash = [p for p in earlier if p.resolve() in inputs]
    if clash:
        raise ConfigError(f"--out {run_dir}: would overwrite input file {clash[0].name}; "
                          "choose another --out")
    if config.overwrite and not config.resume:
        clear_run(run_dir, inputs)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _where(samples: Samples, i: int) -> str:
    row = samples.table.iloc[i]
    if row[S.SOURCE] == S.TRUSTED:
        return f"{row[S.ABS_PATH]} (trusted set)"
    if samples.input.kind == "folder":
        return str(row[S.ABS_PATH])
    return f"{row[S.ABS_PATH]} ({samples.input.source.name} row {int(row[S.ROW]) + 1})"


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
        S.SAMPLE_ID: table[S.SAMPLE_ID], S.PATH: table[S.PATH], S.ROW: table[S.ROW] + 1,
        "reason": list(failures.values()),
    })
    write_table(run_dir / "skipped.csv", skipped)
    reporter.notice(
        f"skipped {len(failures)} unreadable image(s), listed in {run_dir / 'skipped.csv'} "
        "(--strict makes this an error)"
    )
    return keep


def _check_classes(samples: Samples) -> None:
    present = set(samples.table.loc[samples.table[S.SOURCE] == S.DATASET, S.LABEL_INDEX])
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


def embeds(config: RunConfig) -> bool:
    """Whether the audit embeds images once with a pretrained encoder (``--finetune none``)."""
    from labelclean.models.pretrained import is_pretrained_name

    return (not (config.features or config.pred_probs) and is_pretrained_name(config.backbone)
            and config.finetune in (None, "none"))


def build_method(config: RunConfig) -> Method:
    """The method named in ``config`` with its typed options (bad options: exit 2, before work)."""
    from labelclean.models import BACKBONES
    from labelclean.models.pretrained import is_pretrained_name

    if not is_pretrained_name(config.backbone):
        BACKBONES.get(config.backbone)
    return METHODS.get(config.method).build(config.method_options)


def audit(config: RunConfig, reporter: Reporter | None = None) -> AuditResult:
    """Run an audit end to end and write its outputs into the run folder.

    Validates the inputs before any training, trains ``config.method``, scores every sample
    (:mod:`labelclean.scoring`), and writes the run folder (:mod:`labelclean.run.writer`):
    ``scores.csv``/``.parquet``, ``corrected.csv``/``.parquet``, ``transition_matrix.csv``,
    ``summary.json``, ``config.json`` (and ``skipped.csv``, ``report.html``). A run that fails
    leaves no ``config.json`` behind, so the same ``--out`` can be used again.
    """
    reporter = reporter or Reporter()
    started = time.perf_counter()
    config.validate()
    method = build_method(config)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)

    clock = Stopwatch()
    with clock.stage("read manifest"):
        samples = load_samples(
            Path(config.dataset), Path(config.trusted) if config.trusted else None,
            config.path_column, config.label_column, config.id_column,
            require_path=not (config.features or config.pred_probs),
        )
    for note in samples.notes:
        reporter.notice(note)
    run_dir = _prepare_run_dir(config, samples)
    config = resolve_config(config, samples)
    finished = False
    try:
        result = _run(config, samples, method, run_dir, reporter, started, clock)
        finished = True
        return result
    finally:
        if not finished and not config.resume:
            (run_dir / "config.json").unlink(missing_ok=True)


def _run(config: RunConfig, samples: Samples, method: Method, run_dir: Path, reporter: Reporter,
         started: float, clock: Stopwatch) -> AuditResult:
    write_json(run_dir / "config.json", config.to_dict())

    t0 = time.perf_counter()
    all_samples = samples
    stage = ("read predicted probabilities" if config.pred_probs else "read features"
             if config.features else "embed" if embeds(config) else "decode")
    with clock.stage(stage):
        inputs, probs, failures, samples = _inputs(config, samples, run_dir, reporter)
    decode_seconds = time.perf_counter() - t0

    notes: list[str] = list(samples.notes)
    verified = samples.verified
    if not verified.any():
        note = (
            "no trusted set given: scores come from the model's own training signal; "
            "methods that need verified labels (mlc, mslg, ieg) will select their own "
            "reference samples, which are not verified"
        )
        if method.needs_trusted:
            note += f"; method {config.method!r} uses such picks instead of a trusted set"
        reporter.notice(note)
        notes.append(note)

    given = samples.table[S.LABEL_INDEX].to_numpy()
    dataset_rows = (samples.table[S.SOURCE] == S.DATASET).to_numpy()
    exam = split_exam(samples.targets, verified & dataset_rows, len(samples.classes), config.seed,
                      config.exam_share)
    for note in _exam_notes(samples, verified, dataset_rows, exam, config):
        reporter.notice(note)
        notes.append(note)
    # Exam rows train blind: with their given label, outside the reference set.
    reference = verified & ~exam
    targets = np.where(exam, given, samples.targets)
    exam_wrong = given[exam] != samples.targets[exam]
    if probs is not None:
        result = None
        evidence = probs_evidence(probs, targets)
        final_probs: np.ndarray | None = probs
    else:
        with clock.stage("train"):
            result = train(
                config, inputs, torch.from_numpy(targets), torch.from_numpy(reference),
                samples.sample_ids, len(samples.classes), method, run_dir, reporter,
                exam_can_choose=can_rank(exam_wrong), exam_light=says_light(exam_wrong),
            )
        evidence, final_probs = result.evidence, result.final_probs
    notes.extend(evidence.summary.get("notes", []))

    with clock.stage("score"):
        scored = score(evidence, given, verified, samples.targets, config.threshold, exam, config.seed,
                       config.flag_rule)
        extra = dict(evidence.columns)
        if result is not None and final_probs is not None:  # the final model on un-augmented images
            extra["final_suspicion"] = 1.0 - final_probs[np.arange(len(targets)), targets]
        scores = scores_frame(samples, scored, {**extra, S.EXAM: exam})
        transition, transition_source = _transition(evidence, samples, scored)
    with clock.stage("write"):
        outputs = [*write_scores(run_dir, scores), write_transition(run_dir, transition)]
        corrected_name, corrected_columns = write_corrected(samples, scores, run_dir)
        outputs += [corrected_name, *write_arrays(run_dir, samples, evidence.arrays)]

    summary = {
        "labelclean_version": __version__,
        "scores_schema_version": S.SCORES_SCHEMA_VERSION,
        "method": config.method,
        "dataset": config.dataset,
        "input_kind": samples.input.kind,
        "corrected": corrected_name,
        "corrected_columns": corrected_columns,
        "rows": int((all_samples.table[S.SOURCE] == S.DATASET).sum()),
        "samples_scored": int((~verified).sum()),
        "verified": int(verified.sum()),
        "trusted_added": int((samples.table[S.SOURCE] == S.TRUSTED).sum()),
        "skipped": len(failures),
        "classes": samples.classes,
        **scored.summary(given, samples.targets, verified, samples.classes),
        "transition_source": transition_source,
        "input": ("pred-probs" if config.pred_probs else "features" if config.features
                  else "embeddings" if embeds(config) else "images"),
        "epochs": config.epochs if result else 0,
        "image_size": config.image_size,
        "batch_size": config.batch_size,
        "resumed_from_epoch": result.resumed_from_epoch if result else 0,
        "timings": {
            "decode_seconds": round(decode_seconds, 3),
            "train_seconds": round(result.seconds, 3) if result else 0.0,
            "total_seconds": round(time.perf_counter() - started, 3),
            "train_images_per_second": round(result.images_per_second, 1) if result else 0.0,
            "device": result.device if result else None,
            "precision": result.precision if result else None,
            "stages": clock.stages,
        },
        "method_summary": {k: v for k, v in evidence.summary.items() if k != "notes"},
        "notes": notes,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "outputs": sorted(["config.json", "summary.json", *outputs]
                          + (["embeddings.parquet", "encoder.json"] if embeds(config) else [])
                          + (["skipped.csv"] if failures else [])
                          + (["report.html"] if config.report else [])),
        "versions": versions(),
        "config": config.to_dict(),
    }
    summary["exam_rows"] = int(exam.sum())
    rate = summary["estimates"].get("noise_rate")
    clean = 1 - rate["estimate"] if rate and rate["estimate"] is not None else None
    if final_probs is not None:
        check = model_check(final_probs, samples.targets, exam, reference, clean)
        summary["model_check"] = check
        if check["warning"]:
            reporter.notice(check["warning"])
            summary["notes"].append(check["warning"])
    summary["gates"] = _gates(config, summary)
    write_json(run_dir / "summary.json", summary)
    if config.report:
        from labelclean.review.html import build_report

        with clock.stage("report"):
            build_report(run_dir)
        summary["timings"]["total_seconds"] = round(time.perf_counter() - started, 3)
        write_json(run_dir / "summary.json", summary)  # with the report's stage
    return AuditResult(run_dir, scores, summary, config, transition, reporter.notices)


def _inputs(config: RunConfig, samples: Samples, run_dir: Path, reporter: Reporter
            ) -> tuple[torch.Tensor, np.ndarray | None, dict[int, str], Samples]:
    """What the model reads: pixels, embeddings or the user's features (or the user's predicted
    probabilities, which need no model); unreadable images dropped from ``samples``."""
    failures: dict[int, str] = {}
    probs: np.ndarray | None = None
    if config.pred_probs:
        from labelclean.data.vectors import read_pred_probs

        with reporter.task("reading predicted probabilities", 1) as advance:
            probs = read_pred_probs(Path(config.pred_probs), samples, samples.input.id_column)
            advance(1)
        inputs = torch.empty(0)
    elif config.features:
        from labelclean.data.vectors import read_features

        with reporter.task("reading features", 1) as advance:
            inputs = torch.from_numpy(read_features(Path(config.features), samples,
                                                    samples.input.id_column))
            advance(1)
    else:
        if embeds(config):
            inputs, failures = _embed(config, samples, run_dir, reporter)
        else:
            inputs, failures = _decode(config, samples, reporter)
        keep = _handle_failures(samples, failures, config.strict, run_dir, reporter)
        if not keep.all():  # a copy of the kept rows only when some were dropped
            samples = samples.subset(keep)
            inputs = inputs[torch.from_numpy(keep)]
    _check_classes(samples)
    return inputs, probs, failures, samples



def _embed(config: RunConfig, samples: Samples, run_dir: Path, reporter: Reporter
           ) -> tuple[torch.Tensor, dict[int, str]]:
    """Embeddings of every image by the pretrained encoder (cached), also written to the run
    folder as ``embeddings.parquet`` (``--features`` reads it back: same vectors, same scores)."""
    from labelclean.data.embed import embed_images
    from labelclean.models.pretrained import load_encoder
    from labelclean.train.loop import resolve_device

    encoder = load_encoder(config.backbone, config.weights)
    with reporter.task(f"embedding images ({encoder.name})", len(samples)) as advance:
        vectors, failures, cached = embed_images(encoder, samples.table[S.ABS_PATH].tolist(),
                                                 resolve_device(config.device), advance)
    if cached:
        reporter.notice(f"embeddings of {encoder.name} reused from the cache")
    ok = np.ones(len(samples), dtype=bool)
    ok[list(failures)] = False
    frame = pd.DataFrame({S.SAMPLE_ID: samples.table.loc[ok, S.SAMPLE_ID].to_numpy(),
                          "embedding": list(vectors[ok])})
    write_table(run_dir / "embeddings.parquet", frame)
    write_json(run_dir / "encoder.json", {"backbone": encoder.name, "weights": encoder.weights,
                                          "dim": encoder.dim, "preprocessing": encoder.preprocessing,
                                          "cached": cached})
    return torch.from_numpy(vectors), failures


def _decode(config: RunConfig, samples: Samples, reporter: Reporter) -> tuple[torch.Tensor, dict[int, str]]:
    """The pixel cache ``(N, 3, S, S)`` uint8 and the unreadable images (row -> reason)."""
    assert config.image_size is not None
    limit = DEFAULT_MAX_PIXELS if config.max_image_pixels is None else config.max_image_pixels
    with reporter.task("decoding images", len(samples)) as advance:
        (pixels, failures, large), cached = decode_cached(samples.table[S.ABS_PATH].tolist(),
                                                          config.image_size, advance, max_pixels=limit)
    if cached:
        reporter.notice("decoded pixels reused from the cache (LABELCLEAN_CACHE)")
    if large:
        reporter.notice(f"{large} image(s) above {LARGE_PIXELS:,} pixels were decoded (JPEGs at a "
                        "reduced scale); each needs its full size in memory while it decodes")
    return pixels, failures


def _exam_notes(samples: Samples, verified: np.ndarray, dataset_rows: np.ndarray,
                exam: np.ndarray, config: RunConfig) -> list[str]:
    notes = []
    if exam.any():
        notes.append(f"exam: {int(exam.sum())} of the {int((verified & dataset_rows).sum())} "
                     "verified dataset rows are scored blind to measure the audit; the rest "
                     "stay the reference set")
    elif verified.any() and config.exam_share > 0:
        notes.append(f"no exam: {int((verified & dataset_rows).sum())} verified dataset rows are "
                     f"too few to hold out {MIN_EXAM} (a share of {config.exam_share:g}, keeping "
                     f"{MIN_REFERENCE_PER_CLASS} per class for reference); the estimates have "
                     "no interval")
    warning = representativeness(samples.targets, verified & dataset_rows,
                                 samples.table.loc[dataset_rows, S.LABEL_INDEX].to_numpy(),
                                 samples.classes)
    if warning and exam.any():
        notes.append(warning)
    return notes


def _gates(config: RunConfig, summary: dict[str, Any]) -> list[str]:
    """Messages of the gates the run crossed (the CLI exits 3 when there are any)."""
    crossed = []
    estimates = summary["estimates"]
    if config.fail_if_noise_above is not None:
        rate = estimates.get("noise_rate")
        if rate is not None:
            source = ("the model's estimate corrected by the exam" if rate.get("method") == PREDICTION_POWERED
                      else "the exam's estimate")
            low, what = rate["low"], f"the 90% lower bound of {source}, {rate['low']:.1%}"
        else:
            low, what = summary["estimated_noise_rate"], (
                f"the model's estimate {summary['estimated_noise_rate']:.1%} (no exam)")
        if low > config.fail_if_noise_above:
            crossed.append(f"noise rate above {config.fail_if_noise_above:.1%}: {what}")
    if config.fail_if_flagged_above is not None and summary["flagged"] > config.fail_if_flagged_above:
        crossed.append(f"flagged {summary['flagged']} > --fail-if-flagged-above "
                       f"{config.fail_if_flagged_above}")
    return crossed


def _transition(evidence: Evidence, samples: Samples, scored: Scored) -> tuple[pd.DataFrame, str]:
    """The method's learned T, else the one implied by the decisions (true = final label)."""
    given = samples.table[S.LABEL_INDEX].to_numpy()
    if evidence.transition is not None:
        t, source = np.asarray(evidence.transition), "method"
    else:
        final = np.where(scored.is_suspect | samples.verified, scored.suggested, given)
        t, source = transition_from_labels(final, given, len(samples.classes)), "suggestions"
    frame = pd.DataFrame(t, index=pd.Index(samples.classes, name=S.TRANSITION_INDEX),
                         columns=samples.classes)
    return frame, source
