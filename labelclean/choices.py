"""The fixed choices of the command line, importable without PyTorch.

``labelclean --help`` and Tab completion list these without loading the registries;
``tests/test_project.py`` checks that they match the registered methods and backbones.
"""

from __future__ import annotations

from typing import Literal, get_args

Method = Literal["auto", "ce", "ieg", "mlc", "mlnt", "mslg"]
#: ``test_tiny`` is a two-layer network for fast tests, not for audits.
Backbone = Literal["small_cnn", "resnet18", "resnet50", "test_tiny"]
Augment = Literal["crop-flip", "crop", "none"]
Device = Literal["cpu", "cuda", "auto"]
Precision = Literal["auto", "fp32", "bf16"]
FlagRule = Literal["f1", "count"]
MetaScope = Literal["head", "full"]
Noise = Literal["uniform", "flip-random", "flip-to-one", "pair", "asymmetric", "instance", "human", "neighbor"]
Sort = Literal["rank", "suspicion", "given_label", "suggested_label"]
TableFormat = Literal["table", "json"]
ExportFormat = Literal["csv", "parquet", "jsonl", "label-studio"]
Policy = Literal["relabel", "flag", "drop"]
SampleFormat = Literal["csv", "label-studio"]


def values(choice: object) -> tuple[str, ...]:
    return tuple(get_args(choice))
