"""Reading a finished run folder back: scores, summary, config and the corrected manifest."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from labelclean.config import RunConfig
from labelclean.data.dataset import label_text
from labelclean.errors import DataError
from labelclean.io import read_table


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
        except json.JSONDecodeError as exc:
            raise DataError(f"{path / 'summary.json'}: not valid JSON ({exc})") from None
        return cls(path, RunConfig.load(path / "config.json"), summary)

    def scores(self) -> pd.DataFrame:
        parquet = self.path / "scores.parquet"
        if parquet.is_file():
            return pd.read_parquet(parquet)
        return read_table(self.path / "scores.csv")

    def corrected_path(self) -> Path:
        for name in ("corrected.parquet", "corrected.csv"):
            if (self.path / name).is_file():
                return self.path / name
        raise DataError(f"{self.path}: corrected manifest not found (expected corrected.csv or .parquet)")

    def corrected(self) -> pd.DataFrame:
        return read_table(self.corrected_path())

    def image_path(self, path: str, sample_id: str) -> str:
        """The absolute path of a scored image: relative paths resolve from the dataset folder
        (the manifest's folder), or from the trusted file's folder for images that only the
        trusted set names (ids ``trusted:...``)."""
        if os.path.isabs(path):
            return os.path.normpath(path)
        dataset = Path(self.config.dataset)
        base = dataset if self.summary.get("input_kind") == "folder" else dataset.parent
        if str(sample_id).startswith("trusted:") and self.config.trusted:
            base = Path(self.config.trusted).parent
        return os.path.normpath(base / path)

    def label_values(self, corrected: pd.DataFrame | None = None) -> dict[str, Any]:
        """Class name -> the label value as the input wrote it (e.g. ints in Parquet)."""
        frame = self.corrected() if corrected is None else corrected
        column = self.config.label_column if self.summary.get("input_kind") != "folder" else "label"
        out: dict[str, Any] = {}
        for v in frame[column]:
            out.setdefault(label_text(v), v.item() if hasattr(v, "item") else v)
        return out
