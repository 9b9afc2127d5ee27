"""Reading a finished run folder back: scores, summary, config and the corrected manifest.

Every command after ``audit`` opens the run through :class:`Run` and needs nothing else: the
tables carry ``sample_id`` and the resolved ``image_path`` of every row (schema version in
``summary.json``), so the original input is never re-read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from labelclean.config import RunConfig
from labelclean.data.dataset import label_text
from labelclean.errors import ConfigError, DataError
from labelclean.io import read_table
from labelclean.run import schema as S

#: Orders :meth:`Run.suspects` accepts.
SORTS = (S.RANK, S.SUSPICION, S.GIVEN, S.SUGGESTED)


@dataclass
class Run:
    path: Path
    config: RunConfig
    summary: dict[str, Any]

    @classmethod
    def open(cls, path: Path) -> Run:
        path = Path(path)
        if not (path / "summary.json").is_file() or not (path / "config.json").is_file():
            raise DataError(
                f"{path}: expected a finished audit run folder (with summary.json and "
                "config.json), found none; run 'labelclean audit' first"
            )
        try:
            summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path / 'summary.json'}: not valid JSON ({exc})") from None
        version = summary.get("scores_schema_version")
        if version not in S.READABLE_SCHEMA_VERSIONS:
            raise DataError(
                f"{path}: written with run schema {version or 1}, this labelclean reads "
                f"schema {S.SCORES_SCHEMA_VERSION}; audit the dataset again"
            )
        return cls(path, RunConfig.load(path / "config.json"), summary)

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.summary.get("classes", [])]

    @property
    def input_kind(self) -> str:
        return str(self.summary.get("input_kind", "csv"))

    def scores(self) -> pd.DataFrame:
        """``scores.parquet``, else ``scores.csv``, with the schema's types either way."""
        parquet = self.path / "scores.parquet"
        frame = pd.read_parquet(parquet) if parquet.is_file() else read_table(self.path / "scores.csv")
        absent = S.missing(frame, S.SCORE_COLUMNS)
        if absent:
            raise DataError(f"{self.path}: scores table lacks column(s) {', '.join(absent)}")
        try:
            return S.coerce(frame)
        except ValueError as exc:
            raise DataError(f"{self.path}: scores table: {exc}") from None

    def suspects(
        self,
        scores: pd.DataFrame | None = None,
        *,
        top: int = 0,
        class_name: str | None = None,
        min_suspicion: float = 0.0,
        include_all: bool = False,
        sort: str = "rank",
        exclude: set[str] | None = None,
    ) -> pd.DataFrame:
        """Flagged, unverified samples, most suspicious first: the one selection behind the
        terminal table, the HTML report, the interactive review and the Label Studio export.

        ``include_all`` takes every unverified sample; ``exclude`` drops sample ids (e.g. those
        already decided); ``top`` > 0 keeps the first rows after sorting.
        """
        if sort not in SORTS:
            raise ConfigError(f"--sort: expected one of {', '.join(SORTS)}, found {sort!r}")
        if class_name is not None and class_name not in self.classes:
            raise ConfigError(f"--class: {class_name!r} is not a class; classes: {', '.join(self.classes)}")
        rows = self.scores() if scores is None else scores
        rows = rows[~rows[S.VERIFIED]]
        if not include_all:
            rows = rows[rows[S.IS_SUSPECT]]
        if class_name is not None:
            rows = rows[rows[S.GIVEN] == class_name]
        if min_suspicion > 0:
            rows = rows[rows[S.SUSPICION] >= min_suspicion]
        if exclude:
            rows = rows[~rows[S.SAMPLE_ID].isin(exclude)]
        keys = [S.RANK] if sort == S.RANK else [sort, S.RANK]
        ascending = [sort != S.SUSPICION] + [True] * (len(keys) - 1)
        rows = rows.sort_values(keys, ascending=ascending, kind="stable")
        if top > 0:
            rows = rows.head(top)
        return rows.reset_index(drop=True)

    def corrected_path(self) -> Path:
        name = self.summary.get("corrected")
        if name and (self.path / name).is_file():
            return self.path / str(name)
        raise DataError(f"{self.path}: corrected manifest {name or 'corrected.*'} not found")

    def corrected(self) -> pd.DataFrame:
        frame = read_table(self.corrected_path())
        names = self.added_columns(frame)
        types = {names[c]: S.SCORES_TYPES[c] for c in (S.IS_SUSPECT, S.SUSPICION)}
        try:
            return S.coerce(frame, types)
        except ValueError as exc:
            raise DataError(f"{self.corrected_path()}: {exc}") from None

    def added_columns(self, frame: pd.DataFrame) -> dict[str, str]:
        """The corrected manifest's names for the columns the audit added."""
        names = self.summary.get("corrected_columns")
        if not isinstance(names, dict) or any(v not in frame.columns for v in names.values()):
            raise DataError(f"{self.corrected_path()}: the audit's columns are missing; audit again")
        return {str(k): str(v) for k, v in names.items()}

    @property
    def label_column(self) -> str:
        return "label" if self.input_kind == "folder" else self.config.label_column

    @property
    def path_column(self) -> str:
        return "path" if self.input_kind == "folder" else self.config.path_column

    def label_values(self, corrected: pd.DataFrame | None = None) -> dict[str, Any]:
        """Class name -> the label value as the input wrote it (e.g. ints in Parquet)."""
        frame = self.corrected() if corrected is None else corrected
        out: dict[str, Any] = {}
        for v in frame[self.label_column]:
            out.setdefault(label_text(v), v.item() if hasattr(v, "item") else v)
        return out
