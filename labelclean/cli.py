"""The ``labelclean`` command line: thin wrappers over the library.

Results go to stdout; progress, notes and errors to stderr. Exit codes: 0 ok, 1 data or user
error (one line, no traceback; ``LABELCLEAN_DEBUG=1`` shows it), 2 usage error.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from labelclean import choices as C
from labelclean.errors import GateCrossed, Interrupted, LabelcleanError, UsageError
from labelclean.version import __version__

app = typer.Typer(
    name="labelclean",
    help="Find and fix wrong labels in image-classification datasets.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(soft_wrap=True)
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        out.print(f"labelclean {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Find and fix wrong labels in image-classification datasets."""


def _parse_options(pairs: list[str]) -> dict[str, object]:
    options: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--option: expected NAME=VALUE, found {pair!r}")
        key, value = pair.split("=", 1)
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


@app.command(epilog="Example: labelclean audit sample_data/digits --trusted sample_data/trusted.csv")
def audit(
    dataset: Annotated[Path, typer.Argument(help="Image folder (one sub-folder per class) or a CSV, Parquet or JSON-lines manifest.")],
    trusted: Annotated[Optional[Path], typer.Option(help="CSV/Parquet of verified labels (path, label).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default: a new folder under ./labelclean-runs/).")] = None,
    features: Annotated[Optional[Path], typer.Option(help="Your embeddings (Parquet/CSV with an id column and a vector, or .npy in manifest order): train the methods on them, not on pixels.")] = None,
    pred_probs: Annotated[Optional[Path], typer.Option(help="Your out-of-sample predicted probabilities (Parquet/CSV with ids and one column per class, or .npy in manifest order): score them, no training.")] = None,
    method: Annotated[C.Method, typer.Option(help="Method: see 'labelclean methods' (default auto: all four combined).")] = "auto",
    backbone: Annotated[str, typer.Option(help="small_cnn, resnet18, resnet50, or a pretrained encoder FAMILY:NAME: tv:resnet50 (torchvision), timm:NAME, clip:NAME (open_clip).")] = "small_cnn",
    weights: Annotated[Optional[str], typer.Option(help="Hub weights (imagenet for torchvision, hub for timm, a tag such as openai for open_clip) or a local checkpoint path.")] = None,
    finetune: Annotated[Optional[str], typer.Option(help="none: embed once with a pretrained encoder and train on the vectors (default for FAMILY:NAME); head: train the head on images, encoder frozen; full: train everything (default otherwise).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Resize images to this square size (default: fit to data).")] = None,
    max_image_pixels: Annotated[Optional[int], typer.Option(help="Skip images with more pixels (decompression-bomb guard; default: Pillow's limit, about 179 million; 0: no limit).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (default: fit to data size).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size (default: 128, less for tiny sets).")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD, cosine decay).")] = 0.05,
    augment: Annotated[C.Augment, typer.Option(help="Augmentation: crop (no mirror) for digits and text.")] = "crop-flip",
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same scores.")] = 0,
    path_column: Annotated[str, typer.Option(help="Manifest column with image paths.")] = "path",
    label_column: Annotated[str, typer.Option(help="Manifest column with labels.")] = "label",
    id_column: Annotated[Optional[str], typer.Option(help="Manifest column with sample ids (default: 'id' if present, else the path).")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Flag samples with suspicion >= this (default: derived from the data).")] = None,
    flag_rule: Annotated[C.FlagRule, typer.Option(help="How many to flag: f1 (the highest expected F1) or count (the expected number of wrong labels).")] = "f1",
    exam_share: Annotated[float, typer.Option(min=0.0, max=0.95, help="Share of the verified dataset rows scored blind to measure the audit (0: no exam).")] = 0.5,
    fail_if_noise_above: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Exit 3 when the noise rate's 90% lower bound is above this rate.")] = None,
    fail_if_flagged_above: Annotated[Optional[int], typer.Option(min=0, help="Exit 3 when more than this many rows are flagged.")] = None,
    meta_scope: Annotated[C.MetaScope, typer.Option(help="Virtual steps on the 'head' (fast) or the 'full' network.")] = "head",
    option: Annotated[Optional[list[str]], typer.Option("--option", help="Method option NAME=VALUE (repeatable; auto's members: mlc.mode=reset).")] = None,
    strict: Annotated[bool, typer.Option(help="Any unreadable image is an error (default: skip a few).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier run in --out.")] = False,
    device: Annotated[C.Device, typer.Option(help="Where to train (auto: CUDA when present).")] = "auto",
    precision: Annotated[C.Precision, typer.Option(help="Mixed precision: auto (bfloat16 on CUDA), fp32 or bf16.")] = "auto",
    top: Annotated[int, typer.Option(min=0, help="Suspects to show at the end.")] = 10,
    report: Annotated[bool, typer.Option(help="Write report.html (thumbnails of the suspects).")] = True,
    fmt: Annotated[C.TableFormat, typer.Option("--format", help="table, or json: the summary on stdout.")] = "table",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")] = False,
) -> None:
    """Audit a dataset: rank suspect labels, suggest corrections, write a corrected manifest."""
    from labelclean.config import RunConfig
    from labelclean.io import json_text
    from labelclean.pipeline import audit as run_audit
    from labelclean.progress import Reporter, RichReporter
    from labelclean.review.terminal import print_audit_summary

    config = RunConfig(
        dataset=str(dataset), trusted=str(trusted) if trusted else None,
        out=str(out_dir) if out_dir else None, method=method, backbone=backbone, weights=weights,
        image_size=image_size, max_image_pixels=max_image_pixels, epochs=epochs,
        batch_size=batch_size, lr=lr, augment=augment, seed=seed, path_column=path_column,
        label_column=label_column, id_column=id_column, threshold=threshold, flag_rule=flag_rule,
        exam_share=exam_share,
        fail_if_noise_above=fail_if_noise_above, fail_if_flagged_above=fail_if_flagged_above,
        meta_scope=meta_scope, method_options=_parse_options(option or []),
        strict=strict, resume=resume, overwrite=overwrite, device=device, precision=precision, report=report,
        features=str(features) if features else None, pred_probs=str(pred_probs) if pred_probs else None,
        finetune=finetune,
    )
    result = run_audit(config, Reporter() if quiet else RichReporter(err))
    if fmt == "json":
        sys.stdout.write(json_text({k: v for k, v in result.summary.items() if k != "config"}))
    else:
        print_audit_summary(out, result, top)
    if result.summary["gates"]:
        raise GateCrossed("; ".join(result.summary["gates"]))


@app.command()
def review(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by 'labelclean audit'.")],
    top: Annotated[int, typer.Option(help="Show at most this many rows (0: all).")] = 20,
    class_name: Annotated[Optional[str], typer.Option("--class", help="Only samples whose given label is this class.")] = None,
    min_suspicion: Annotated[float, typer.Option(min=0.0, max=1.0, help="Only samples with suspicion >= this.")] = 0.0,
    all_samples: Annotated[bool, typer.Option("--all", help="Include samples that are not flagged.")] = False,
    sort: Annotated[C.Sort, typer.Option(help="Order of the rows (rank: most suspicious first).")] = "rank",
    fmt: Annotated[C.TableFormat, typer.Option("--format", help="table or json.")] = "table",
    interactive: Annotated[bool, typer.Option(help="Walk through suspects and record decisions in decisions.csv.")] = False,
) -> None:
    """Show suspects from a run, filtered and sorted, as a table or JSON; or review them one by one."""
    from labelclean.io import json_text, records
    from labelclean.review.terminal import print_suspects
    from labelclean.run.folder import Run

    if interactive:
        from labelclean.review.interactive import ReviewSession, interactive_input, read_key, require_tty

        require_tty(sys.stdin.isatty())
        session = ReviewSession(run_dir, class_name)
        made = session.run_loop(interactive_input(session.classes), out, key=read_key)
        err.print(f"{made} decision(s) recorded in {escape(str(Path(run_dir) / 'decisions.csv'))}",
                  highlight=False)
        return
    run = Run.open(run_dir)
    rows = run.suspects(top=top, class_name=class_name, min_suspicion=min_suspicion,
                        include_all=all_samples, sort=sort)
    if fmt == "json":
        sys.stdout.write(json_text(records(rows)))
    else:
        print_suspects(out, rows, title=f"{len(rows)} sample(s) from {run_dir}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by 'labelclean audit'.")],
    fmt: Annotated[Optional[C.ExportFormat], typer.Option("--format", help="Output format (default: the input's format).")] = None,
    policy: Annotated[C.Policy, typer.Option(help="relabel (apply strong suggestions), flag (add columns) or drop (remove flagged rows).")] = "relabel",
    threshold: Annotated[Optional[float], typer.Option(help="Treat suspicion >= this as flagged (default: the audit's decisions).")] = None,
    dest: Annotated[Optional[Path], typer.Option("--out", help="Output file (default: inside the run folder).")] = None,
    decisions: Annotated[bool, typer.Option(help="Apply reviewers' decisions (decisions.csv) over suggestions; write changes.csv.")] = False,
    promote_trusted: Annotated[Optional[Path], typer.Option(help="Add reviewed labels to this trusted file for the next audit.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Write corrected label files that can be fed straight back to 'labelclean audit'."""
    from labelclean.export.manifest import export_labels

    written, changed, total = export_labels(run_dir, fmt, policy, threshold, dest,
                                            decisions, promote_trusted, overwrite)
    if fmt == "label-studio":
        from labelclean.export.label_studio import local_files
        from labelclean.run.folder import Run

        where = local_files(Run.open(run_dir))
        err.print(escape(f"{changed} suspects as Label Studio tasks; labelling config in "
                         f"{written.with_name(written.stem + '-config.xml')}\n"
                         f"Label Studio: start it with LOCAL_FILES_SERVING_ENABLED=true "
                         f"LOCAL_FILES_DOCUMENT_ROOT={where.document_root}, create a project with "
                         f"that config, add a Local Files storage (no sync) at "
                         f"{' and at '.join(map(str, where.storages))}, "
                         f"then import the tasks file."), highlight=False, soft_wrap=True)
    else:
        verb = {"relabel": "relabelled", "drop": "dropped", "flag": "flagged"}[policy]
        err.print(f"{verb if not decisions else 'changed'} {changed} of {total} rows", highlight=False)
    out.print(escape(str(written)), highlight=False)


@app.command("import-decisions")
def import_decisions_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by 'labelclean audit'.")],
    source: Annotated[Path, typer.Argument(help="decisions.csv-style CSV, or a Label Studio JSON export.")],
) -> None:
    """Read reviewers' decisions into the run (validated: unknown ids or labels are errors)."""
    from labelclean.export.decisions import import_decisions

    count = import_decisions(run_dir, source)
    err.print(f"imported {count} decision(s) into {escape(str(Path(run_dir) / 'decisions.csv'))}",
              highlight=False)


@app.command("sample-trusted", epilog="Example: labelclean sample-trusted ./dataset --n 200 --out to_verify.csv")
def sample_trusted(
    dataset: Annotated[Path, typer.Argument(help="Image folder or CSV/Parquet/JSON-lines manifest.")],
    out_file: Annotated[Path, typer.Option("--out", help="CSV of the rows to verify (id, path, given label); correct the labels, then pass it as --trusted.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Rows to draw (stratified by given label, random within each class).")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    expected_noise: Annotated[float, typer.Option(min=0.0, max=1.0, help="Noise rate to size the interval for (or take it from --run).")] = 0.1,
    run_dir: Annotated[Optional[Path], typer.Option("--run", help="An earlier audit: size the interval at its estimated noise rate.")] = None,
    fmt: Annotated[C.SampleFormat, typer.Option("--format", help="csv, or label-studio: also Label Studio tasks with the given label to check.")] = "csv",
    from_label_studio: Annotated[Optional[Path], typer.Option(help="A reviewed Label Studio JSON export of the sample's tasks; DATASET is then the sample CSV, and --out the trusted file to write.")] = None,
    path_column: Annotated[str, typer.Option(help="Manifest column with image paths.")] = "path",
    label_column: Annotated[str, typer.Option(help="Manifest column with labels.")] = "label",
    id_column: Annotated[Optional[str], typer.Option(help="Manifest column with sample ids.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Draw a random sample of rows to verify: the trusted set whose exam gives the audit's intervals."""
    from labelclean.run.writer import check_destination
    from labelclean.verify import interval_width, sample_to_verify, trusted_from_label_studio, write_sample

    if from_label_studio is not None:
        check_destination(out_file, {Path(dataset).resolve(), Path(from_label_studio).resolve()}, overwrite)
        rows, changed = trusted_from_label_studio(dataset, from_label_studio, out_file)
        err.print(f"{rows} verified row(s), {changed} relabelled by reviewers", highlight=False)
        out.print(escape(str(out_file)), highlight=False)
        return
    check_destination(out_file, {Path(dataset).resolve()}, overwrite)
    if run_dir is not None:
        from labelclean.run.folder import Run

        summary = Run.open(run_dir).summary
        rate = (summary.get("estimates") or {}).get("noise_rate") or {}
        expected_noise = rate.get("estimate") or summary.get("estimated_noise_rate", expected_noise)
    frame, total = sample_to_verify(dataset, n, seed, path_column, label_column, id_column)
    written = write_sample(frame, out_file, fmt == "label-studio")
    width = interval_width(len(frame), expected_noise)
    err.print(f"{len(frame)} of {total} rows drawn at random (stratified by given label). At a noise "
              f"rate of {expected_noise:.1%}, the exam (half of them, scored blind) gives a 90% "
              f"interval about {width:.1%} wide; verify each row's label, then run "
              f"'labelclean audit {escape(str(dataset))} --trusted {escape(str(out_file))}'",
              highlight=False, soft_wrap=True)
    for path in written:
        out.print(escape(str(path)), highlight=False)


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by 'labelclean audit'.")],
    truth: Annotated[Path, typer.Option(help="CSV/Parquet with the true label of every sample.")],
    id_column: Annotated[Optional[str], typer.Option(help="Truth column matching the run's sample ids (default: detected).")] = None,
    label_column: Annotated[str, typer.Option(help="Truth column with the true labels.")] = "label",
    fmt: Annotated[C.TableFormat, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Measure a run against known true labels (AUROC, AP, precision, recall, F1, accuracy)."""
    from labelclean.evaluate import evaluate_run
    from labelclean.io import json_text
    from labelclean.review.terminal import print_evaluation

    result = evaluate_run(run_dir, truth, id_column, label_column)
    if fmt == "json":
        sys.stdout.write(json_text(result))
    else:
        print_evaluation(out, result)


@app.command()
def simulate(
    dataset: Annotated[Path, typer.Argument(help="Image folder or CSV/Parquet manifest with clean labels.")],
    noise: Annotated[C.Noise, typer.Option(help="Noise type (rules in 'labelclean.simulate').")],
    rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="Noise rate in [0, 1].")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for noisy manifest, truth.csv, trusted.csv, noise.json.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    trusted_per_class: Annotated[int, typer.Option(min=0, help="Clean samples per class written to trusted.csv (kept out of the noisy part).")] = 10,
    trusted_sample: Annotated[bool, typer.Option(help="trusted.csv verifies a random sample of the noisy manifest's rows (trusted-per-class x classes), as a team verifying a sample would; the audit's exam needs this.")] = False,
    class_map: Annotated[Optional[str], typer.Option("--map", help="For asymmetric noise: SOURCE:TARGET,... e.g. cat:dog,truck:automobile")] = None,
    path_column: Annotated[str, typer.Option(help="Manifest column with image paths.")] = "path",
    label_column: Annotated[str, typer.Option(help="Manifest column with labels.")] = "label",
    id_column: Annotated[Optional[str], typer.Option(help="Manifest column with sample ids.")] = None,
) -> None:
    """Write a noisy copy of a dataset's labels with the truth, for measuring audits."""
    from labelclean.simulate import simulate as run_simulate

    report = run_simulate(dataset, out_dir, noise, rate, seed, trusted_per_class, class_map,
                          path_column, label_column, id_column, trusted_sample)
    out.print(f"{report['noise']} noise at rate {rate}: {report['flipped']} of {report['samples']} "
              f"labels changed (realised rate {report['realised_rate']:.4f}); "
              f"{report['trusted']} trusted -> {escape(str(out_dir))}", highlight=False)
    classes = report["classes"]
    if len(classes) <= 12:
        table = Table(title="realised transition (rows: true, columns: noisy)", title_justify="left")
        table.add_column("")
        for c in classes:
            table.add_column(escape(c), justify="right")
        for c, row in zip(classes, report["realised_matrix"]):
            table.add_row(escape(c), *(f"{v:.2f}" for v in row))
        out.print(table)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by 'labelclean audit'.")],
    dest: Annotated[Optional[Path], typer.Option("--out", help="Output file (default: RUN_DIR/report.html).")] = None,
    max_cards: Annotated[int, typer.Option(min=0, help="Suspects with thumbnails (highest suspicion first).")] = 2000,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Rebuild the self-contained HTML report of a run."""
    from labelclean.review.html import build_report
    from labelclean.run.folder import Run
    from labelclean.run.writer import check_destination, run_files

    if dest is not None:
        run = Run.open(run_dir)
        inputs = {Path(p).resolve() for p in (run.config.dataset, run.config.trusted) if p}
        check_destination(dest, inputs | {p.resolve() for p in run_files(run.path)}, overwrite)
    out.print(escape(str(build_report(run_dir, dest, max_cards))), highlight=False)


@app.command()
def methods() -> None:
    """List the registered methods and backbones."""
    from labelclean.methods import METHODS
    from labelclean.models import BACKBONES

    for name in METHODS.names():
        cls = METHODS.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        trusted = " (uses a trusted set)" if cls.needs_trusted else ""
        out.print(escape(f"{name:6s} {doc}{trusted}"), highlight=False)
    out.print(f"backbones: {', '.join(BACKBONES.names())}", highlight=False)


def main() -> None:
    """Console entry point: usage errors exit 2 (Typer); data and user errors one line, exit 1."""
    signal.signal(signal.SIGINT, _interrupt)
    try:
        app()
    except LabelcleanError as exc:
        _fail(str(exc), exc.exit_code, exc, "gate crossed" if isinstance(exc, GateCrossed) else "error")
    except (Interrupted, KeyboardInterrupt):
        err.print("interrupted (files already written are complete; 'audit --resume' continues "
                  "a run from its last checkpoint)", highlight=False, soft_wrap=True)
        sys.exit(Interrupted.exit_code)
    except BrokenPipeError:
        # stdout was closed early (e.g. `| head`): stop quietly, as the Python docs advise.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:
        if exc.errno not in _WRITE_ERRORS:
            _unexpected(exc)
        where = exc.filename or "output"
        _fail(f"{where}: cannot write: {exc.strerror} (choose another --out, or free or unlock "
              "that folder)", 1, exc)
    except Exception as exc:  # a bug: still one line, with a way to see the details
        _unexpected(exc)


#: Errors of a destination the user can fix (permissions, a read-only or full disk).
_WRITE_ERRORS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})


def _unexpected(exc: BaseException) -> None:
    _fail(f"unexpected {type(exc).__name__}: {exc} (set LABELCLEAN_DEBUG=1 for details)", 1, exc)


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted()


def _fail(message: str, code: int, exc: BaseException, what: str = "error") -> None:
    if os.environ.get("LABELCLEAN_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    err.print(f"[red]{what}:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
