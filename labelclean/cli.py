"""The ``labelclean`` command line: thin wrappers over the library.

Results go to stdout; progress, notes and errors to stderr. Exit codes: 0 ok, 1 data or user
error (one line, no traceback; ``LABELCLEAN_DEBUG=1`` shows it), 2 usage error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from labelclean import __version__
from labelclean.errors import ConfigError, LabelcleanError

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
            raise ConfigError(f"--option: expected NAME=VALUE, found {pair!r}")
        key, value = pair.split("=", 1)
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


@app.command(epilog="Example: labelclean audit sample_data/digits --trusted sample_data/trusted.csv")
def audit(
    dataset: Annotated[Path, typer.Argument(help="Image folder (one sub-folder per class) or a CSV/Parquet manifest.")],
    trusted: Annotated[Optional[Path], typer.Option(help="CSV/Parquet of verified labels (path, label).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default: a new folder under ./labelclean-runs/).")] = None,
    method: Annotated[str, typer.Option(help="Method: see 'labelclean methods' (default auto: all four combined).")] = "auto",
    backbone: Annotated[str, typer.Option(help="small_cnn, resnet18 or resnet50.")] = "small_cnn",
    weights: Annotated[Optional[str], typer.Option(help="'imagenet' (torchvision) or a local checkpoint path.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Resize images to this square size (default: fit to data).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (default: fit to data size).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size (default: 128, less for tiny sets).")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD, cosine decay).")] = 0.05,
    augment: Annotated[str, typer.Option(help="crop-flip, crop (no mirror: digits, text) or none.")] = "crop-flip",
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same scores.")] = 0,
    path_column: Annotated[str, typer.Option(help="Manifest column with image paths.")] = "path",
    label_column: Annotated[str, typer.Option(help="Manifest column with labels.")] = "label",
    id_column: Annotated[Optional[str], typer.Option(help="Manifest column with sample ids (default: 'id' if present, else the path).")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Flag samples with suspicion >= this (default: derived from the data).")] = None,
    meta_scope: Annotated[str, typer.Option(help="Virtual steps on the 'head' (fast) or the 'full' network.")] = "head",
    option: Annotated[Optional[list[str]], typer.Option("--option", help="Method option NAME=VALUE (repeatable).")] = None,
    strict: Annotated[bool, typer.Option(help="Any unreadable image is an error (default: skip a few).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier run in --out.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    top: Annotated[int, typer.Option(help="Suspects to show at the end.")] = 10,
    report: Annotated[bool, typer.Option(help="Write report.html (thumbnails of the suspects).")] = True,
) -> None:
    """Audit a dataset: rank suspect labels, suggest corrections, write a corrected manifest."""
    from labelclean.audit import audit as run_audit
    from labelclean.config import RunConfig
    from labelclean.progress import RichReporter
    from labelclean.report import print_audit_summary

    config = RunConfig(
        dataset=str(dataset), trusted=str(trusted) if trusted else None,
        out=str(out_dir) if out_dir else None, method=method, backbone=backbone, weights=weights,
        image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr, augment=augment,
        seed=seed, path_column=path_column, label_column=label_column, id_column=id_column,
        threshold=threshold, meta_scope=meta_scope, method_options=_parse_options(option or []),
        strict=strict, resume=resume, overwrite=overwrite, device=device, report=report,
    )
    result = run_audit(config, RichReporter(err))
    print_audit_summary(out, result, top)


@app.command()
def review(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by 'labelclean audit'.")],
    top: Annotated[int, typer.Option(help="Show at most this many rows (0: all).")] = 20,
    class_name: Annotated[Optional[str], typer.Option("--class", help="Only samples whose given label is this class.")] = None,
    min_suspicion: Annotated[float, typer.Option(help="Only samples with suspicion >= this.")] = 0.0,
    all_samples: Annotated[bool, typer.Option("--all", help="Include samples that are not flagged.")] = False,
    sort: Annotated[str, typer.Option(help="Sort by suspicion, rank, given_label or suggested_label.")] = "suspicion",
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    interactive: Annotated[bool, typer.Option(help="Walk through suspects and record decisions in decisions.csv.")] = False,
) -> None:
    """Show suspects from a run, filtered and sorted, as a table or JSON; or review them one by one."""
    from labelclean.report import print_suspects, select_suspects
    from labelclean.runs import Run

    if interactive:
        from labelclean.review_session import ReviewSession, interactive_input, require_tty

        require_tty(sys.stdin.isatty())
        session = ReviewSession(run_dir, class_name)
        made = session.run_loop(interactive_input(session.classes), out)
        err.print(f"{made} decision(s) recorded in {Path(run_dir) / 'decisions.csv'}", highlight=False)
        return
    if fmt not in ("table", "json"):
        raise ConfigError(f"--format: expected table or json, found {fmt!r}")
    run = Run.open(run_dir)
    rows = select_suspects(run.scores(), top=top, class_name=class_name,
                           min_suspicion=min_suspicion, include_all=all_samples, sort=sort,
                           classes=run.summary.get("classes", []))
    if fmt == "json":
        sys.stdout.write(rows.to_json(orient="records", indent=2) + "\n")
    else:
        print_suspects(out, rows, title=f"{len(rows)} sample(s) from {run_dir}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by 'labelclean audit'.")],
    fmt: Annotated[str, typer.Option("--format", help="csv, parquet, jsonl or label-studio (default: the input's format).")] = "",
    policy: Annotated[str, typer.Option(help="relabel (apply strong suggestions), flag (add columns) or drop (remove flagged rows).")] = "relabel",
    threshold: Annotated[Optional[float], typer.Option(help="Treat suspicion >= this as flagged (default: the audit's decisions).")] = None,
    dest: Annotated[Optional[Path], typer.Option("--out", help="Output file (default: inside the run folder).")] = None,
    decisions: Annotated[bool, typer.Option(help="Apply reviewers' decisions (decisions.csv) over suggestions; write changes.csv.")] = False,
    promote_trusted: Annotated[Optional[Path], typer.Option(help="Add reviewed labels to this trusted file for the next audit.")] = None,
) -> None:
    """Write corrected label files that can be fed straight back to 'labelclean audit'."""
    from labelclean.export import export_labels

    written, changed, total = export_labels(run_dir, fmt or None, policy, threshold, dest,
                                            decisions, promote_trusted)
    if fmt == "label-studio":
        from labelclean.export import local_files
        from labelclean.runs import Run

        where = local_files(Run.open(run_dir))
        err.print(f"{changed} suspects as Label Studio tasks; labelling config in "
                  f"{written.with_name(written.stem + '-config.xml')}\n"
                  f"Label Studio: start it with LOCAL_FILES_SERVING_ENABLED=true "
                  f"LOCAL_FILES_DOCUMENT_ROOT={where.document_root}, create a project with that "
                  f"config, add a Local Files storage at {where.storage} (no sync), then import "
                  f"the tasks file.", highlight=False, soft_wrap=True)
    else:
        verb = {"relabel": "relabelled", "drop": "dropped", "flag": "flagged"}[policy]
        err.print(f"{verb if not decisions else 'changed'} {changed} of {total} rows", highlight=False)
    out.print(str(written), highlight=False)


@app.command("import-decisions")
def import_decisions_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by 'labelclean audit'.")],
    source: Annotated[Path, typer.Argument(help="decisions.csv-style CSV, or a Label Studio JSON export.")],
) -> None:
    """Read reviewers' decisions into the run (validated: unknown ids or labels are errors)."""
    from labelclean.export import import_decisions

    count = import_decisions(run_dir, source)
    err.print(f"imported {count} decision(s) into {Path(run_dir) / 'decisions.csv'}", highlight=False)


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by 'labelclean audit'.")],
    truth: Annotated[Path, typer.Option(help="CSV/Parquet with the true label of every sample.")],
    id_column: Annotated[Optional[str], typer.Option(help="Truth column matching the run's sample ids (default: detected).")] = None,
    label_column: Annotated[str, typer.Option(help="Truth column with the true labels.")] = "label",
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Measure a run against known true labels (AUROC, AP, precision, recall, F1, accuracy)."""
    from labelclean.evaluate import evaluate_run
    from labelclean.report import print_evaluation

    result = evaluate_run(run_dir, truth, id_column, label_column)
    if fmt == "json":
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        print_evaluation(out, result)


@app.command()
def simulate(
    dataset: Annotated[Path, typer.Argument(help="Image folder or CSV/Parquet manifest with clean labels.")],
    noise: Annotated[str, typer.Option(help="uniform, flip-random, flip-to-one, pair, asymmetric, instance or neighbor.")],
    rate: Annotated[float, typer.Option(help="Noise rate in [0, 1].")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for noisy manifest, truth.csv, trusted.csv, noise.json.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    trusted_per_class: Annotated[int, typer.Option(help="Clean samples per class written to trusted.csv (kept out of the noisy part).")] = 10,
    class_map: Annotated[Optional[str], typer.Option("--map", help="For asymmetric noise: SOURCE:TARGET,... e.g. cat:dog,truck:automobile")] = None,
    path_column: Annotated[str, typer.Option(help="Manifest column with image paths.")] = "path",
    label_column: Annotated[str, typer.Option(help="Manifest column with labels.")] = "label",
    id_column: Annotated[Optional[str], typer.Option(help="Manifest column with sample ids.")] = None,
) -> None:
    """Write a noisy copy of a dataset's labels with the truth, for measuring audits."""
    from labelclean.noise import simulate as run_simulate

    report = run_simulate(dataset, out_dir, noise, rate, seed, trusted_per_class, class_map,
                          path_column, label_column, id_column)
    out.print(f"{report['noise']} noise at rate {rate}: {report['flipped']} of {report['samples']} "
              f"labels changed (realised rate {report['realised_rate']:.4f}); "
              f"{report['trusted']} trusted -> {out_dir}", highlight=False)
    classes = report["classes"]
    if len(classes) <= 12:
        table = Table(title="realised transition (rows: true, columns: noisy)", title_justify="left")
        table.add_column("")
        for c in classes:
            table.add_column(c, justify="right")
        for c, row in zip(classes, report["realised_matrix"]):
            table.add_row(c, *(f"{v:.2f}" for v in row))
        out.print(table)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by 'labelclean audit'.")],
    dest: Annotated[Optional[Path], typer.Option("--out", help="Output file (default: RUN_DIR/report.html).")] = None,
    max_cards: Annotated[int, typer.Option(help="Suspects with thumbnails (highest suspicion first).")] = 2000,
) -> None:
    """Rebuild the self-contained HTML report of a run."""
    from labelclean.html_report import build_report

    out.print(str(build_report(run_dir, dest, max_cards)), highlight=False)


@app.command()
def methods() -> None:
    """List the registered methods and backbones."""
    from labelclean.methods import METHODS
    from labelclean.models import BACKBONES

    for name in METHODS.names():
        cls = METHODS.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        trusted = " (uses a trusted set)" if cls.needs_trusted else ""
        out.print(f"{name:6s} {doc}{trusted}", highlight=False)
    out.print(f"backbones: {', '.join(BACKBONES.names())}", highlight=False)


def main() -> None:
    """Console entry point: usage errors exit 2 (Typer); data and user errors one line, exit 1."""
    try:
        app()
    except LabelcleanError as exc:
        _fail(str(exc), 1, exc)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        # stdout was closed early (e.g. `| head`): stop quietly, as the Python docs advise.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
    except Exception as exc:  # a bug: still one line, with a way to see the details
        _fail(f"unexpected {type(exc).__name__}: {exc} (set LABELCLEAN_DEBUG=1 for details)", 1, exc)


def _fail(message: str, code: int, exc: BaseException) -> None:
    if os.environ.get("LABELCLEAN_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
