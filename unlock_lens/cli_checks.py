"""Checks of ``unlock-lens`` arguments that run before any model loads.

Each raises an :class:`UnlockLensError` whose one line names the flag, the value and the fix;
none loads a model, reads a dataset or writes a file. The choices they accept are the ones the
``--help`` texts list (``choices``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from pathlib import Path

from unlock_lens.errors import UnlockLensError

AGGREGATORS = ("mean", "pca")


def choices(names: Iterable[object]) -> str:
    """``a, b or c``: a list of choices as help texts and errors write it."""
    items = [str(n) for n in names]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def dataset_names() -> list[str]:
    from unlock_lens.evaluate.datasets import DATASETS

    return list(DATASETS)


def format_names() -> list[str]:
    from unlock_lens.prompts import FORMATS

    return list(FORMATS)


def check_positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise UnlockLensError(f"{flag} must be at least 1, got {value}")


def check_alpha(alpha: float | None, flag: str = "--alpha") -> None:
    if alpha is not None and not math.isfinite(alpha):
        raise UnlockLensError(f"{flag} must be a finite number, got {alpha}")


def _parse_list(text: str, flag: str, kind: type, example: str) -> list:
    """A comma list of ``kind`` (int or float), at least one."""
    try:
        items = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise UnlockLensError(f"{flag} must be comma-separated {what}, e.g. {example}; got {text!r}") from None
    if not items:
        raise UnlockLensError(f"{flag} is empty: give at least one value, e.g. {flag} {example}")
    return items


def parse_alphas(text: str, flag: str = "--alphas") -> list[float]:
    """``"0.05,0.2"`` → finite floats, at least one."""
    alphas = _parse_list(text, flag, float, "0.05,0.2")
    for alpha in alphas:
        check_alpha(alpha, flag)
    return alphas


def parse_seeds(text: str, flag: str = "--seeds") -> list[int]:
    """``"0,1,2"`` → integers, at least one."""
    return _parse_list(text, flag, int, "0,1,2")


def check_dataset(name: str, split: str | None = None, flag: str = "--dataset") -> None:
    """A registered dataset and (when given) one of its splits (``--split``)."""
    from unlock_lens.evaluate.datasets import DATASETS

    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UnlockLensError(f"{flag} {name!r} is not a known dataset{hint}; choose {choices(DATASETS)}")
    splits = list(DATASETS[name].files)
    if split is not None and split not in splits:
        raise UnlockLensError(f"--split {split!r}: {name} has the split(s) {choices(splits)}")


def check_format(name: str | None, flag: str) -> None:
    if name is not None and name not in format_names():
        raise UnlockLensError(f"{flag} {name!r} is not a prompt format; choose {choices(format_names())}")


def check_choice(value: str, allowed: tuple[str, ...], flag: str) -> None:
    if value not in allowed:
        raise UnlockLensError(f"{flag} {value!r}: choose {choices(allowed)}")


def check_method(method: str) -> None:
    from unlock_lens.align import ALIGNMENT_METHODS

    if method not in ALIGNMENT_METHODS:
        raise UnlockLensError(f"--method {method!r} is not an alignment method; choose "
                              f"{choices(sorted(ALIGNMENT_METHODS))}")


def check_steering(normalisation: str, positions: str) -> None:
    """The library's own checks of the edit and the position rule, with the flag named."""
    from unlock_lens.interventions import check_rule, get_edit

    for flag, check, value in (("--normalisation", get_edit, normalisation),
                               ("--positions", check_rule, positions)):
        try:
            check(value)
        except UnlockLensError as err:
            raise UnlockLensError(f"{flag}: {err}") from None


def check_device(device: str) -> None:
    """A device torch knows and this machine has (a missing GPU is one line, not a traceback)."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UnlockLensError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UnlockLensError(f"--device {device}: this machine has no CUDA GPU that torch "
                                  f"{torch.__version__} can use; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise UnlockLensError(f"--device {device}: this machine has {count} CUDA GPU(s) "
                                  f"(cuda:0 to cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UnlockLensError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UnlockLensError(f"--device {device!r}: use cpu, cuda, cuda:N or mps")


def check_model(name: str, flag: str) -> None:
    """A model name that can load: see ``models.check_model_source``."""
    from unlock_lens.models import check_model_source

    try:
        check_model_source(name)
    except UnlockLensError as err:
        raise UnlockLensError(f"{flag} {name}: {err}") from None


def check_in_file(path: Path | None, flag: str) -> None:
    if path is not None and not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UnlockLensError(f"{flag} {path} {what}: give an existing file")


def check_out_file(path: Path, flag: str = "--out") -> None:
    if path.is_dir():
        raise UnlockLensError(f"{flag} {path} is a folder: give a file path, e.g. {path / 'out.jsonl'}")


def check_out_folder(path: Path, command: str, flag: str = "--out") -> None:
    if path.exists() and not path.is_dir():
        raise UnlockLensError(f"{flag} {path} is a file: {command} writes a folder; give a folder path")
