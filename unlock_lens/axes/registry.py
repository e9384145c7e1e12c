"""The axis registry: behaviour axes read from ``axes.toml`` (one ``[[axis]]`` entry each, no code).

An :class:`Axis` pairs a locked prompt format (the neutral request alone) with an unlocked one
(the same request after the axis's instruction) and scores generated text for the behaviour.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from types import MappingProxyType
from typing import Any

from unlock_lens.axes.scorers import check_params, make_scorer
from unlock_lens.errors import UnlockLensError
from unlock_lens.prompts import PromptFormat

#: the fields every ``[[axis]]`` entry must have, with their types
REQUIRED_FIELDS: Mapping[str, type | tuple[type, ...]] = MappingProxyType(
    {"name": str, "description": str, "instruction": str, "scorer": str, "threshold": (int, float)}
)


def default_axes_path() -> Path:
    """``axes.toml`` shipped inside the package."""
    return Path(str(files("unlock_lens.axes") / "axes.toml"))


@dataclass(frozen=True)
class Axis:
    """One behaviour: its instruction, its scorer kind (``scorers.SCORER_PARAMS``) and the
    threshold at which a score counts as the behaviour being present; ``params`` are the
    scorer's parameters from the entry (a language code, a word list as a tuple)."""

    name: str
    description: str
    instruction: str
    scorer: str
    threshold: float
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def locked_format(self, chat: bool) -> PromptFormat:
        """The neutral request alone."""
        return PromptFormat(f"{self.name}-locked", instruction="", chat=chat)

    def unlocked_format(self, chat: bool) -> PromptFormat:
        """The same request after the axis's instruction."""
        return PromptFormat(f"{self.name}-unlocked", instruction=self.instruction, chat=chat)

    def score(self, texts: Sequence[str]) -> list[float]:
        """The behaviour score of each text (higher = more of the behaviour)."""
        if isinstance(texts, str):
            raise UnlockLensError(f"axis {self.name!r}: score takes a list of texts, not one string: wrap it in [...]")
        scorer = make_scorer(self.scorer, self.params)
        return [scorer(t) for t in texts]

    def present(self, texts: Sequence[str]) -> list[bool]:
        """Whether each text shows the behaviour: ``score >= threshold``."""
        return [s >= self.threshold for s in self.score(texts)]

    def to_dict(self) -> dict[str, Any]:
        """The ``axes.toml`` entry as JSON-ready data (recorded in reports)."""
        return {"name": self.name, "description": self.description, "instruction": self.instruction,
                "scorer": self.scorer, "threshold": self.threshold,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()}}


def _axis_from_entry(entry: Any, where: str) -> Axis:
    if not isinstance(entry, dict):
        raise UnlockLensError(f"{where}: each [[axis]] entry must be a table")
    missing = [k for k in REQUIRED_FIELDS if k not in entry]
    if missing:
        raise UnlockLensError(f"{where}: missing field(s) {missing}: every [[axis]] entry needs {list(REQUIRED_FIELDS)}")
    for key, kind in REQUIRED_FIELDS.items():
        if not isinstance(entry[key], kind) or isinstance(entry[key], bool):
            raise UnlockLensError(f"{where}: field {key!r} must be a {'number' if key == 'threshold' else 'string'}, "
                                  f"not {entry[key]!r}")
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", entry["name"]):
        raise UnlockLensError(f"{where}: name {entry['name']!r} must be a lower-case slug such as 'french'")
    if not entry["instruction"].strip():
        raise UnlockLensError(f"{where}: the instruction is empty: write the sentence that asks for the behaviour")
    params = {k: v for k, v in entry.items() if k not in REQUIRED_FIELDS}
    check_params(entry["scorer"], params, where)
    return Axis(entry["name"], entry["description"], entry["instruction"], entry["scorer"],
                float(entry["threshold"]), {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})


def load_axes(path: str | Path | None = None) -> dict[str, Axis]:
    """The axes of ``path`` (default: the package's ``axes.toml``) by name, in file order."""
    path = Path(path) if path is not None else default_axes_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnlockLensError(f"no axes file at {path}: pass the path of an axes.toml") from None
    except tomllib.TOMLDecodeError as e:
        raise UnlockLensError(f"{path} is not valid TOML ({e}): fix the syntax") from None
    entries = data.get("axis")
    if not isinstance(entries, list) or not entries:
        raise UnlockLensError(f"{path} has no [[axis]] entries: add one per axis")
    axes: dict[str, Axis] = {}
    for i, entry in enumerate(entries):
        label = entry.get("name", f"#{i + 1}") if isinstance(entry, dict) else f"#{i + 1}"
        axis = _axis_from_entry(entry, f"{path.name}: axis {label!r}")
        if axis.name in axes:
            raise UnlockLensError(f"{path.name}: axis {axis.name!r} is defined twice: rename or remove one")
        axes[axis.name] = axis
    return axes


def get_axis(name: str, path: str | Path | None = None) -> Axis:
    """One axis of the registry by name."""
    axes = load_axes(path)
    if name not in axes:
        raise UnlockLensError(f"unknown axis {name!r}; the registry has {list(axes)}")
    return axes[name]


def score_texts(axis_name: str, texts: Sequence[str]) -> list[float]:
    """The behaviour score of each text on the registry's axis ``axis_name``."""
    return get_axis(axis_name).score(texts)
