"""Math-reasoning problem sets as ``Problem`` records, plus leakage-free splits.

Local JSONL copies are read from ``path``, else from ``$UNLOCK_LENS_DATA``, else from the first
``shared/data`` folder found beside the checkout or above the working directory. When a file is
not found locally and ``HF_HUB_OFFLINE`` is unset, the Hugging Face hub is tried through the
optional ``datasets`` library (record order, and so ids, may then differ from the local copies).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import random
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from unlock_lens.errors import UnlockLensError
from unlock_lens.evaluate.answers import format_number, normalize_number

__all__ = [
    "DATASETS",
    "DEFAULT_SPLIT_FRACTIONS",
    "TRAIN_SPLIT_FRACTIONS",
    "DatasetSpec",
    "Problem",
    "default_data_dir",
    "load_dataset",
    "load_jsonl",
    "question_fingerprint",
    "remove_overlap",
    "split_problems",
]

DATA_ENV_VAR = "UNLOCK_LENS_DATA"


@dataclass(frozen=True)
class Problem:
    """One problem: ``answer`` is the normalised gold final answer (number or LaTeX text)."""

    id: str
    question: str
    answer: str
    dataset: str
    split: str
    solution: str | None = None
    metadata: dict = field(default_factory=dict, compare=False, hash=False)


# (question, answer, solution, metadata) from one JSON record.
Converted = tuple[str, str, str | None, dict]


@dataclass(frozen=True)
class HubSource:
    """Where a set lives on the Hugging Face hub and how to rename its fields to ours."""

    repo: str
    config: str | None
    splits: Mapping[str, tuple[str, ...]]  # our split -> hub splits, concatenated
    rename: Mapping[str, str] = field(default_factory=dict)  # hub field -> local field


@dataclass(frozen=True)
class DatasetSpec:
    """Loader spec: local file per split, required fields, record converter, hub fallback."""

    name: str
    files: Mapping[str, str]
    required: tuple[str, ...]
    convert: Callable[[dict], Converted]
    hub: HubSource | None = None


# --------------------------------------------------------------------------------------------
# record converters
# --------------------------------------------------------------------------------------------


def _number_text(value: Any) -> str:
    """Gold answer text: numbers canonicalised (``145.0`` -> ``145``, ``1,234`` -> ``1234``)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        return format_number(float(value))
    text = str(value).strip()
    if re.fullmatch(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?", text):
        return format_number(float(text.replace(",", "")))
    return text


def _gsm8k(row: dict) -> Converted:
    solution = str(row["answer"])
    if "####" not in solution:
        raise KeyError("#### <answer> (end of the answer field)")
    gold = _number_text(solution.rsplit("####", 1)[1].strip())
    return str(row["question"]), gold, solution, {}


def _math500(row: dict) -> Converted:
    meta = {k: row[k] for k in ("subject", "level", "unique_id") if k in row}
    return str(row["problem"]), str(row["answer"]).strip(), row.get("solution"), meta


def _agieval_math(row: dict) -> Converted:
    question = str(row["question"])
    if row.get("passage"):
        question = f"{row['passage']}\n{question}"
    gold = row.get("answer")
    options, label = row.get("options"), row.get("label")
    if gold in (None, "") and options and label is not None:
        index = "ABCDEFGHIJ".index(str(label).strip()[0]) if isinstance(label, str) else label
        gold = re.sub(r"^\s*\(?[A-J]\)\s*", "", str(options[int(index)]))
    if gold in (None, ""):
        raise KeyError("answer (or options + label)")
    other = row.get("other") or {}
    meta = {k: other[k] for k in ("level", "type") if k in other}
    if options:
        meta.update(options=options, label=label)
    return question, str(gold).strip(), other.get("solution"), meta


def _svamp(row: dict) -> Converted:
    question = f"{str(row['Body']).strip()} {str(row['Question']).strip()}"
    meta = {"equation": row.get("Equation"), "type": row.get("Type"), "source_id": row.get("ID")}
    return question, _number_text(row["Answer"]), None, meta


def _multiarith(row: dict) -> Converted:
    return str(row["input"]).strip(), _number_text(row["target"]), None, {}


def _asdiv(row: dict) -> Converted:
    raw = str(row["answer"]).strip()
    number = re.fullmatch(r"(-?[\d,]*\.?\d+)\s*(\([^()]*\))?", raw)
    if number and normalize_number(number.group(1)) is not None:
        gold = _number_text(number.group(1))
    else:
        value = normalize_number(raw) if re.fullmatch(r"-?\(?\d+/\d+\)?", raw) else None
        gold = format_number(value) if value is not None else raw
    question = f"{str(row['body']).strip()} {str(row['question']).strip()}"
    meta = {
        "raw_answer": raw,
        "formula": row.get("formula"),
        "solution_type": row.get("solution_type"),
    }
    return question, gold, None, meta


DATASETS: Mapping[str, DatasetSpec] = MappingProxyType(
    {
        "gsm8k": DatasetSpec(
            "gsm8k",
            {"train": "gsm8k_train.jsonl", "test": "gsm8k_test.jsonl"},
            ("question", "answer"),
            _gsm8k,
            HubSource("openai/gsm8k", "main", {"train": ("train",), "test": ("test",)}),
        ),
        "math500": DatasetSpec(
            "math500",
            {"test": "math500_test.jsonl"},
            ("problem", "answer"),
            _math500,
            HubSource("HuggingFaceH4/MATH-500", None, {"test": ("test",)}),
        ),
        "agieval-math": DatasetSpec(
            "agieval-math",
            {"test": "agieval_math.jsonl"},
            ("question",),
            _agieval_math,
            None,  # no stable hub copy with the original fields; use the JSONL file
        ),
        "svamp": DatasetSpec(
            "svamp",
            {"test": "svamp_test.jsonl"},
            ("Body", "Question", "Answer"),
            _svamp,
            HubSource("ChilleD/SVAMP", None, {"test": ("train", "test")}),
        ),
        "multiarith": DatasetSpec(
            "multiarith",
            {"test": "multiarith_test.jsonl"},
            ("input", "target"),
            _multiarith,
            HubSource(
                "ChilleD/MultiArith",
                None,
                {"test": ("train", "test")},
                {"question": "input", "final_ans": "target"},
            ),
        ),
        "asdiv": DatasetSpec(
            "asdiv",
            {"test": "asdiv_test.jsonl"},
            ("body", "question", "answer"),
            _asdiv,
            HubSource("EleutherAI/asdiv", None, {"test": ("validation",)}),
        ),
    }
)

_ALIASES = MappingProxyType(
    {"math-500": "math500", "math_500": "math500", "agieval": "agieval-math", "mawps": "multiarith"}
)


# --------------------------------------------------------------------------------------------
# locating and reading files
# --------------------------------------------------------------------------------------------


def _candidate_dirs() -> list[Path]:
    """Folders searched for the standard files, most specific first."""
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return [Path(env).expanduser()]
    here = Path(__file__).resolve()
    dirs = [here.parents[3] / "shared" / "data"]  # <repo>/../shared/data
    cwd = Path.cwd().resolve()
    dirs += [p / "shared" / "data" for p in (cwd, *cwd.parents)]
    return list(dict.fromkeys(dirs))


def default_data_dir() -> Path | None:
    """``$UNLOCK_LENS_DATA`` if set, else the first existing ``shared/data`` folder, else None."""
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return next((d for d in _candidate_dirs() if d.is_dir()), None)


def _resolve_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, _ALIASES.get(key.replace("-", "_"), key))
    if key in DATASETS:
        return key
    known = ", ".join(DATASETS)
    close = difflib.get_close_matches(key, list(DATASETS), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnlockLensError(f"Unknown dataset {name!r}. Known datasets: {known}.{hint}")


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(1-based line number, record) for each non-blank line; bad JSON names file and line."""
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UnlockLensError(
                    f"{path}: line {lineno}: malformed JSON ({exc.msg} at column {exc.colno})."
                    " Each line must be one JSON object."
                ) from exc
            if not isinstance(record, dict):
                raise UnlockLensError(
                    f"{path}: line {lineno}: malformed JSON record: expected an object, "
                    f"got {type(record).__name__}."
                )
            records.append((lineno, record))
    return records


def _get(record: dict, dotted: str) -> Any:
    """``record['a']['b']`` for ``'a.b'``; KeyError if any part is missing."""
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def _missing_field(source: str, lineno: int, fld: str, record: dict) -> UnlockLensError:
    present = ", ".join(sorted(record)) or "none"
    return UnlockLensError(
        f"{source}: line {lineno}: missing field {fld!r}; fields present: {present}."
    )


def _apply_limit(problems: list[Problem], limit: int | None, source: str) -> list[Problem]:
    if limit is not None:
        if limit < 0:
            raise UnlockLensError(f"limit must be >= 0 or None, got {limit}.")
        problems = problems[:limit]
    if not problems:
        why = "limit=0 selects" if limit == 0 else "the source holds"
        raise UnlockLensError(f"Empty selection: {why} no problems ({source}).")
    return problems


def _make_problems(
    rows: Iterable[tuple[int, dict]], spec: DatasetSpec, split: str, source: str
) -> list[Problem]:
    problems = []
    for index, (lineno, record) in enumerate(rows):
        for fld in spec.required:
            if fld not in record:
                raise _missing_field(source, lineno, fld, record)
        try:
            question, answer, solution, meta = spec.convert(record)
        except KeyError as exc:
            raise _missing_field(source, lineno, str(exc.args[0]), record) from exc
        problems.append(
            Problem(
                id=f"{spec.name}-{split}-{index:04d}",
                question=question,
                answer=answer,
                dataset=spec.name,
                split=split,
                solution=solution,
                metadata={"line": lineno, **meta},
            )
        )
    return problems


def _load_from_hub(spec: DatasetSpec, split: str) -> list[tuple[int, dict]]:
    """Rows from the Hugging Face hub; raises ImportError / any hub error to the caller."""
    import datasets as hf  # optional dependency, imported lazily

    assert spec.hub is not None
    rows: list[tuple[int, dict]] = []
    for hub_split in spec.hub.splits[split]:
        ds = hf.load_dataset(spec.hub.repo, spec.hub.config, split=hub_split)
        for record in ds:
            rec = {spec.hub.rename.get(k, k): v for k, v in dict(record).items()}
            rows.append((len(rows) + 1, rec))
    return rows


def load_dataset(
    name: str,
    split: str = "test",
    *,
    path: str | os.PathLike | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """Load a registered set (see ``DATASETS``) as a list of ``Problem``.

    ``path`` is a JSONL file or a folder holding the standard file names (e.g.
    ``gsm8k_test.jsonl``); default: ``default_data_dir()``, then the Hugging Face hub unless
    ``HF_HUB_OFFLINE`` is set. ``limit`` keeps the first ``limit`` problems.
    """
    spec = DATASETS[_resolve_name(name)]
    if split not in spec.files:
        raise UnlockLensError(
            f"Dataset {spec.name!r} has no split {split!r}; available: {', '.join(spec.files)}."
        )
    filename = spec.files[split]
    if path is not None:
        given = Path(path).expanduser()
        target: Path | None = given / filename if given.is_dir() else given
        if not target.is_file():  # type: ignore[union-attr]
            raise UnlockLensError(
                f"No data file for {spec.name} {split}: looked at {target}. Pass path= a JSONL "
                f"file or a folder holding {filename}, or set {DATA_ENV_VAR}=<folder>."
            )
        searched = [target]
    else:
        searched = [d / filename for d in _candidate_dirs()]
        target = next((p for p in searched if p.is_file()), None)

    if target is not None:
        rows = _read_jsonl(target)
        source = str(target)
    else:
        hub_note = ""
        rows = []
        if spec.hub is None:
            hub_note = " (no Hugging Face hub source is registered for this set)"
        elif os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0", "false", "False"):
            hub_note = " (HF_HUB_OFFLINE is set, so the Hugging Face hub was not tried)"
        else:
            try:
                rows = _load_from_hub(spec, split)
            except ImportError:
                hub_note = (
                    " (the optional `datasets` package is not installed: pip install datasets)"
                )
            except Exception as exc:  # noqa: BLE001 - network/hub errors vary
                hub_note = (
                    f" (Hugging Face hub {spec.hub.repo} failed: {type(exc).__name__}: {exc})"
                )
        if not rows:
            looked = ", ".join(str(p) for p in searched)
            raise UnlockLensError(
                f"No data file for {spec.name} {split}: looked for {filename} in: {looked}"
                f"{hub_note}. Point at a copy with load_dataset({spec.name!r}, path=...) or set "
                f"{DATA_ENV_VAR}=<folder holding {filename}>."
            )
        source = f"hf://{spec.hub.repo}" if spec.hub else spec.name
    if limit == 0:
        return _apply_limit([], 0, source)
    return _apply_limit(_make_problems(rows, spec, split, source), limit, source)


def load_jsonl(
    path: str | os.PathLike,
    *,
    question_field: str,
    answer_field: str,
    id_field: str | None = None,
    solution_field: str | None = None,
    name: str = "custom",
    split: str = "test",
    limit: int | None = None,
) -> list[Problem]:
    """Load a user JSONL file; fields may be dotted (``"other.solution"``).

    Ids are ``f"{name}-{record[id_field]}"`` or ``f"{name}-{split}-{index:04d}"``. A gold
    answer ending a worked solution (``... #### 42``) is reduced to the part after ``####``.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise UnlockLensError(f"No data file at {file}. Pass the path of an existing JSONL file.")
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, (lineno, record) in enumerate(_read_jsonl(file)):
        values: dict[str, Any] = {}
        for role, fld in (("q", question_field), ("a", answer_field), ("i", id_field)):
            if fld is None:
                continue
            try:
                values[role] = _get(record, fld)
            except KeyError:
                raise _missing_field(str(file), lineno, fld, record) from None
        solution = None
        if solution_field is not None:
            try:
                solution = str(_get(record, solution_field))
            except KeyError:
                raise _missing_field(str(file), lineno, solution_field, record) from None
        answer = values["a"]
        if isinstance(answer, str) and "####" in answer:
            solution = solution or answer
            answer = answer.rsplit("####", 1)[1]
        pid = f"{name}-{values['i']}" if id_field else f"{name}-{split}-{index:04d}"
        if pid in seen:
            raise UnlockLensError(
                f"{file}: line {lineno}: duplicate id {pid!r} (first on line {seen[pid]})."
            )
        seen[pid] = lineno
        problems.append(
            Problem(
                id=pid,
                question=str(values["q"]),
                answer=_number_text(answer),
                dataset=name,
                split=split,
                solution=solution,
                metadata={"line": lineno},
            )
        )
    return _apply_limit(problems, limit, str(file))


# --------------------------------------------------------------------------------------------
# overlap and splits
# --------------------------------------------------------------------------------------------


def _normalise_question(text: str) -> str:
    """Lower-case alphanumerics only: whitespace, case and punctuation are ignored."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"[\W_]+", "", text)


def question_fingerprint(text: str) -> str:
    """Stable 16-hex-digit hash of the question, insensitive to whitespace/case/punctuation."""
    return hashlib.sha1(_normalise_question(text).encode("utf-8")).hexdigest()[:16]


def remove_overlap(problems: Sequence[Problem], others: Iterable[Problem]) -> list[Problem]:
    """``problems`` minus those whose question fingerprint occurs in ``others``."""
    banned = {question_fingerprint(p.question) for p in others}
    return [p for p in problems if question_fingerprint(p.question) not in banned]


DEFAULT_SPLIT_FRACTIONS: Mapping[str, float] = MappingProxyType(
    {"key": 0.25, "align": 0.25, "dev": 0.1, "eval": 0.4}
)
#: a train split cut for the method's own questions (the evaluation sets are test splits):
#: what ``unlock-lens extract`` / ``align`` and the analysis scripts draw from GSM8K train
TRAIN_SPLIT_FRACTIONS: Mapping[str, float] = MappingProxyType({"key": 0.4, "align": 0.4, "dev": 0.2})


def split_problems(
    problems: Sequence[Problem],
    fractions: Mapping[str, float] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = 0,
) -> dict[str, list[Problem]]:
    """Seeded split into named parts, disjoint by id and by normalised question text.

    Problems sharing a question fingerprint always land in the same part. Part sizes follow
    ``fractions`` (largest-remainder rounding over question groups); if the fractions sum to 1
    every problem is assigned, else the remainder is left out. Independent of input order.
    """
    if not problems:
        raise UnlockLensError("split_problems got no problems (empty selection).")
    if not fractions:
        raise UnlockLensError("split_problems needs at least one named fraction.")
    if any(not (0 <= f <= 1) or math.isnan(f) for f in fractions.values()):
        raise UnlockLensError(f"Split fractions must lie in [0, 1]; got {dict(fractions)}.")
    total = sum(fractions.values())
    if total > 1 + 1e-9:
        raise UnlockLensError(f"Split fractions sum to {total:.4g} > 1: {dict(fractions)}.")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UnlockLensError(f"Problem ids must be unique; {dup!r} occurs more than once.")

    groups: dict[str, list[Problem]] = {}
    for p in problems:
        groups.setdefault(question_fingerprint(p.question), []).append(p)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)

    n = len(keys)
    exact = {name: f * n for name, f in fractions.items()}
    counts = {name: math.floor(x) for name, x in exact.items()}
    target_total = n if abs(total - 1) <= 1e-9 else math.floor(total * n + 1e-9)
    by_remainder = sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)
    for name in by_remainder[: max(0, target_total - sum(counts.values()))]:
        counts[name] += 1

    out: dict[str, list[Problem]] = {}
    start = 0
    for name in fractions:
        chunk = keys[start : start + counts[name]]
        start += counts[name]
        out[name] = [p for k in chunk for p in groups[k]]
    return out
