"""Typed method options, checked when a method is built.

Each method declares a frozen dataclass of its options (``Method.Options``). Values arrive
from ``--option NAME=VALUE`` as JSON or text and are converted to the field's type; a
``Literal`` field accepts only its listed values. An unknown name or a bad value is a
:class:`~labelclean.errors.UsageError` (exit code 2) that names the allowed values, raised
before any data is read.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from labelclean.errors import UsageError

OptionsT = TypeVar("OptionsT", bound="MethodOptions")


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    """Base of every method's options; subclasses add fields with defaults."""

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def parse(cls: type[OptionsT], raw: dict[str, Any], where: str) -> OptionsT:
        """Build from ``raw`` (names to JSON or text values); ``where`` names the method."""
        hints = typing.get_type_hints(cls)
        known = cls.names()
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise UsageError(f"--option {where}: unknown option {unknown[0]!r}; "
                             f"known: {', '.join(known) or 'none'}")
        values = {name: _convert(value, hints[name], f"{where}.{name}") for name, value in raw.items()}
        try:
            return cls(**values)
        except ValueError as exc:
            raise UsageError(f"--option {where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _convert(value: Any, hint: Any, name: str) -> Any:
    origin = get_origin(hint)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise UsageError(f"--option {name}: expected one of "
                             f"{', '.join(map(str, allowed))}, found {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _convert(value, args[0], name)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise UsageError(f"--option {name}: expected true or false, found {value!r}")
    if hint in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            number = hint(value)
            if hint is int and float(value) != number:
                raise ValueError
            return number
        except (TypeError, ValueError):
            raise UsageError(f"--option {name}: expected {'an integer' if hint is int else 'a number'}, "
                             f"found {value!r}") from None
    if hint is str:
        return str(value)
    return value


def check(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition`` (for ``__post_init__`` checks)."""
    if not condition:
        raise ValueError(message)


def split_nested(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``{"warmup": .2, "mlc.mode": "reset"}`` -> ``({"warmup": .2}, {"mlc": {"mode": "reset"}})``."""
    own: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if "." in key:
            member, name = key.split(".", 1)
            nested.setdefault(member, {})[name] = value
        else:
            own[key] = value
    return own, nested
