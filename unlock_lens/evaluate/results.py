"""Evaluation results: one row per (problem, condition, alpha, seed), files, summary table.

A row is a flat dict with the fields in ``ROW_FIELDS``::

    problem_id, condition, alpha, seed, prompt, output, answer, gold, correct, n_tokens, cot_format,
    first_token_entropy   (optional: rows written before it existed lack it)

``alpha`` is None for unsteered conditions; ``seed`` is None except for the ``random`` control.
``EvalResults.save(dir)`` writes ``results.jsonl`` (+ ``results.parquet`` when pyarrow is
installed) and a ``results.meta.json`` sidecar (models, pack hash, dataset, decoding, version).

The summary has one row per (condition, alpha, seed); the random control has a pooled row
(``seed`` missing, ``n_seeds`` > 1) plus one row per seed. Columns: accuracy with a 95% Wilson
interval, CoT-format rate (:func:`shows_working`, lenient) beside the stricter multi-step rate
(two or more :func:`arithmetic_steps`) and the degenerate rate (:func:`degenerate`), mean output
tokens, mean first-token entropy (nats), and the paired
difference against ``direct``
(per-problem accuracy, averaged over seeds for a pooled row) with a paired-bootstrap 95%
interval over problems and an exact McNemar p-value. For a pooled row the Wilson interval and
McNemar test treat every (problem, seed) as an independent trial (approximate); its bootstrap
resamples problems and is the interval to trust. A condition run on a subset of the direct
problems (e.g. one random seed per third of them) is paired on that subset.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from unlock_lens.artifacts import atomic_write_bytes
from unlock_lens.errors import ArtifactError, UnlockLensError
from unlock_lens.evaluate.stats import mcnemar_exact, paired_bootstrap_diff, wilson_interval

__all__ = [
    "CONDITIONS",
    "DEGENERATE_KINDS",
    "ROW_FIELDS",
    "EvalResults",
    "arithmetic_steps",
    "behaviour",
    "degenerate",
    "degenerate_kind",
    "markdown_table",
    "shows_working",
    "summarize",
]

CONDITIONS = ("direct", "cot-prompt", "steered", "native-key", "random", "random-mapped")
ROW_FIELDS = (
    "problem_id", "condition", "alpha", "seed", "prompt", "output", "answer", "gold",
    "correct", "n_tokens", "cot_format", "first_token_entropy",
)
OPTIONAL_ROW_FIELDS = ("first_token_entropy",)
RESULTS_FORMAT_VERSION = 1

_FINAL_MARKER_RE = re.compile(r"final\s+answer|the\s+answer\s+is", re.IGNORECASE)
_EQUATION_RE = re.compile(r"\d\s*[-+*/×÷x]\s*\(?\s*\$?\d[^=\n]*=\s*\$?-?\d")
_STEP_SPLIT_RE = re.compile(r"(?<=[.!?:])\s+|\n+")
_WORD_RE = re.compile(r"[A-Za-z0-9]+")


def shows_working(text: str) -> bool:
    """Whether an output shows multi-step working before its final answer (``cot_format``).

    Heuristic, on the text before the first final-answer marker ("final answer" / "the
    answer is"; the whole text if none): True if it holds an arithmetic step ``a op b = c``
    (e.g. ``3 + 5 = 8``, ``<<48/2=24>>``), or at least 2 steps, a step being a line or sentence
    with >= 3 words. ``"The final answer is 8."`` → False; ``"3 + 5 = 8. The final answer
    is 8."`` → True.
    """
    marker = _FINAL_MARKER_RE.search(text)
    body = text[: marker.start()] if marker else text
    if _EQUATION_RE.search(body):
        return True
    steps = [s for s in _STEP_SPLIT_RE.split(body) if len(_WORD_RE.findall(s)) >= 3]
    return len(steps) >= 2


def arithmetic_steps(text: str) -> int:
    """How many arithmetic steps ``a op b = c`` an output writes (anywhere in it).

    Stricter than :func:`shows_working`, which also counts two sentences of prose: an output
    with two or more steps has worked in writing, whatever its wording.

    >>> arithmetic_steps("3 + 5 = 8, then 8 * 2 = 16. The answer is 16."), arithmetic_steps("It is 16.")
    (2, 0)
    """
    return len(_EQUATION_RE.findall(text))


DEGENERATE_KINDS = ("blank", "cut-by-stop", "near-loop", "loop")
_NUMBERED_EMPTY_RE = re.compile(r"^\s*\d+\s*[.):]?\s*$")
_NUMBER_RE = re.compile(r"\d+")


def _same_step(a: str, b: str, min_similarity: float) -> bool:
    """Identical, or both worded (>= 3 words once numbers are masked) and equal up to small
    edits: a bare calculation chain ("5 + 3 = 8", "8 + 2 = 10") is not a repeat."""
    if a == b:
        return True
    a, b = _NUMBER_RE.sub("#", a), _NUMBER_RE.sub("#", b)
    if min(len(_WORD_RE.findall(a)), len(_WORD_RE.findall(b))) < 3:
        return False
    return SequenceMatcher(None, a, b).ratio() >= min_similarity


def _looping_steps(text: str, min_run: int, min_similarity: float) -> str | None:
    """"loop" / "near-loop" when ``min_run`` consecutive steps (lines or sentences) repeat one
    step exactly / with small edits; None otherwise."""
    steps = [s.strip() for s in _STEP_SPLIT_RE.split(text) if s.strip()]
    run_start = 0
    for i in range(1, len(steps) + 1):
        if i < len(steps) and _same_step(steps[i - 1], steps[i], min_similarity):
            continue
        if i - run_start >= min_run:
            return "loop" if len(set(steps[run_start:i])) == 1 else "near-loop"
        run_start = i
    return None


def degenerate_kind(text: str, *, max_period: int = 64, min_span: int = 96, min_run: int = 3,
                    min_similarity: float = 0.9) -> str | None:
    """What kind of degenerate output ``text`` is (one of ``DEGENERATE_KINDS``), or None.

    - ``"blank"``: empty, or whitespace that does not end in a newline;
    - ``"cut-by-stop"``: whitespace ending in a newline: the blank line the ``"\\nQuestion:"``
      stop string leaves when the model starts the next question instead of answering;
    - ``"loop"``: the last ``max(2p, min_span)`` characters repeat one block of
      ``p <= max_period`` characters, or ``min_run`` consecutive lines / sentences are identical;
    - ``"near-loop"``: ``min_run`` consecutive worded lines / sentences repeat one with small
      edits (a difflib ratio >= ``min_similarity`` once numbers are masked: "The number of days
      is 15." then "... is 16."), or ``min_run`` numbered empty items (``"1.\\n2.\\n3."``).

    >>> [degenerate_kind(t) for t in ("", "\\n", "ab" * 60, "1.\\n2.\\n3.", "3 + 5 = 8. It is 8.")]
    ['blank', 'cut-by-stop', 'loop', 'near-loop', None]
    """
    if not text.strip():
        return "cut-by-stop" if text.endswith("\n") else "blank"
    for p in range(1, max_period + 1):
        span = max(2 * p, min_span)
        if len(text) >= span and text[-span + p:] == text[-span:-p]:
            return "loop"
    if sum(bool(_NUMBERED_EMPTY_RE.match(line)) for line in text.splitlines()) >= min_run:
        return "near-loop"
    return _looping_steps(text, min_run, min_similarity)


def degenerate(text: str, **kwargs: Any) -> bool:
    """Whether an output is degenerate: blank, cut by a stop string to nothing, a loop or a
    near-loop (:func:`degenerate_kind` says which; ``kwargs`` go to it).

    >>> degenerate(" \\n"), degenerate("ab" * 60), degenerate("3 + 5 = 8. The final answer is 8.")
    (True, True, False)
    """
    return degenerate_kind(text, **kwargs) is not None


def behaviour(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Generation-level measures of one condition's rows (``evaluate`` rows: output, correct,
    cot_format, n_tokens): the degenerate rate and the rate of each kind
    (``<kind>_rate``, :data:`DEGENERATE_KINDS`, ``-`` as ``_``), the CoT-format rate among
    non-degenerate outputs beside the stricter multi-step rate among them (two or more
    :func:`arithmetic_steps`), mean length in tokens, and accuracy."""
    if not rows:
        raise UnlockLensError("no rows to summarise: pass a condition's evaluation rows")
    kinds = [degenerate_kind(r["output"]) for r in rows]
    healthy = [r for r, k in zip(rows, kinds, strict=True) if k is None]
    return {
        "n": len(rows),
        "degenerate_rate": 1.0 - len(healthy) / len(rows),
        **{f"{kind.replace('-', '_')}_rate": kinds.count(kind) / len(rows) for kind in DEGENERATE_KINDS},
        "cot_rate_non_degenerate": (sum(bool(r["cot_format"]) for r in healthy) / len(healthy)
                                    if healthy else float("nan")),
        "multi_step_rate_non_degenerate": (sum(arithmetic_steps(r["output"]) >= 2 for r in healthy) / len(healthy)
                                           if healthy else float("nan")),
        "mean_tokens": sum(r["n_tokens"] for r in rows) / len(rows),
        "accuracy": sum(bool(r["correct"]) for r in rows) / len(rows),
    }


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------

GroupKey = tuple[str, float | None, int | None]


def _condition_rank(condition: str) -> int:
    return CONDITIONS.index(condition) if condition in CONDITIONS else len(CONDITIONS)


def _group_rows(rows: Iterable[dict[str, Any]]) -> dict[GroupKey, list[dict[str, Any]]]:
    groups: dict[GroupKey, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["condition"], row["alpha"], row["seed"]), []).append(row)
    return groups


def _sort_key(key: tuple[str, float | None, int | None, bool]) -> tuple:
    condition, alpha, seed, pooled = key
    return (_condition_rank(condition), condition, -1.0 if alpha is None else alpha,
            0 if pooled else 1, -1 if seed is None else seed)


def _per_problem(rows: Sequence[dict[str, Any]]) -> dict[str, list[bool]]:
    out: dict[str, list[bool]] = {}
    for row in rows:
        out.setdefault(row["problem_id"], []).append(bool(row["correct"]))
    return out


def _paired_stats(
    rows: Sequence[dict[str, Any]], base: dict[str, bool], n_boot: int, seed: int
) -> dict[str, float]:
    per = _per_problem(rows)
    if not set(per) <= set(base):
        raise UnlockLensError(
            f"condition {rows[0]['condition']!r} (alpha={rows[0]['alpha']}) covers "
            f"{len(set(per) - set(base))} problems that 'direct' does not: rows are not paired "
            "by id; run every condition on (a subset of) the direct problems"
        )
    ids = sorted(per)
    mean_cond = [sum(per[i]) / len(per[i]) for i in ids]
    ci = paired_bootstrap_diff(mean_cond, [float(base[i]) for i in ids], n_boot=n_boot, seed=seed)
    stacked_a = [c for i in ids for c in per[i]]
    stacked_b = [base[i] for i in ids for _ in per[i]]
    return {"diff": ci.diff, "diff_lo": ci.lo, "diff_hi": ci.hi,
            "mcnemar_p": mcnemar_exact(stacked_a, stacked_b)}


def _summary_row(
    key: tuple[str, float | None, int | None, bool],
    rows: Sequence[dict[str, Any]],
    base: dict[str, bool] | None,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    condition, alpha, row_seed, _ = key
    n = len(rows)
    k = sum(bool(r["correct"]) for r in rows)
    lo, hi = wilson_interval(k, n)
    nan = float("nan")
    paired = {"diff": nan, "diff_lo": nan, "diff_hi": nan, "mcnemar_p": nan}
    if base is not None:
        paired = _paired_stats(rows, base, n_boot, seed)
    return {
        "condition": condition,
        "alpha": alpha,
        "seed": row_seed,
        "n_seeds": len({r["seed"] for r in rows}),
        "n": n,
        "k": k,
        "accuracy": k / n,
        "acc_lo": lo,
        "acc_hi": hi,
        "cot_rate": sum(bool(r["cot_format"]) for r in rows) / n,
        "multi_step_rate": sum(arithmetic_steps(r["output"]) >= 2 for r in rows) / n,
        "degenerate_rate": sum(degenerate(r["output"]) for r in rows) / n,
        "mean_tokens": sum(int(r["n_tokens"]) for r in rows) / n,
        "first_token_entropy": _nanmean([r.get("first_token_entropy") for r in rows]),
        **paired,
    }


def _nanmean(values: Sequence[Any]) -> float:
    kept = [float(v) for v in values if v is not None and v == v]
    return sum(kept) / len(kept) if kept else float("nan")


def summary_records(
    rows: Sequence[dict[str, Any]], *, baseline: str = "direct", n_boot: int = 2000, seed: int = 0
) -> list[dict[str, Any]]:
    """The summary as a list of dicts (see the module docstring); ``summarize`` wraps it."""
    if not rows:
        raise UnlockLensError("no result rows to summarise")
    groups = _group_rows(rows)
    keyed: dict[tuple[str, float | None, int | None, bool], list[dict[str, Any]]] = {}
    for (condition, alpha, s), members in groups.items():
        keyed[(condition, alpha, s, False)] = members
    for condition, alpha in {(c, a) for c, a, s in groups if s is not None}:
        pooled = [r for (c, a, s), m in groups.items() if (c, a) == (condition, alpha) and s is not None
                  for r in m]
        keyed[(condition, alpha, None, True)] = pooled
    base_rows = groups.get((baseline, None, None))
    base = None
    if base_rows is not None:
        base = {r["problem_id"]: bool(r["correct"]) for r in base_rows}
        if len(base) != len(base_rows):
            raise UnlockLensError(f"the {baseline!r} condition lists a problem id twice")
    return [_summary_row(key, keyed[key], base, n_boot, seed) for key in sorted(keyed, key=_sort_key)]


def summarize(
    rows: Sequence[dict[str, Any]], *, baseline: str = "direct", n_boot: int = 2000, seed: int = 0
):
    """Summary table (pandas DataFrame): accuracy + Wilson CI, CoT rate beside the multi-step
    rate, degenerate rate, length, paired diff."""
    import pandas as pd

    frame = pd.DataFrame(summary_records(rows, baseline=baseline, n_boot=n_boot, seed=seed))
    frame["seed"] = frame["seed"].astype("Int64")
    frame["alpha"] = frame["alpha"].astype(float)
    return frame


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"
    text = str(value)
    return "" if text == "<NA>" else text


def markdown_table(frame: Any) -> str:
    """A DataFrame as a GitHub markdown table (no extra dependency)."""
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for record in frame.to_dict("records"):
        lines.append("| " + " | ".join(_cell(record[c]) for c in frame.columns) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def _jsonl_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _parquet_bytes(rows: Sequence[dict[str, Any]], metadata: dict[str, Any]) -> bytes | None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    table = pa.Table.from_pylist(list(rows))
    table = table.replace_schema_metadata({"unlock_lens": json.dumps(metadata, sort_keys=True)})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


@dataclass
class EvalResults:
    """Rows of one evaluation run plus its metadata (models, pack hash, data, decoding)."""

    rows: list[dict[str, Any]]
    metadata: dict[str, Any] = field(default_factory=dict)

    def frame(self):
        """The rows as a pandas DataFrame (``alpha`` float, ``seed`` nullable Int64)."""
        import pandas as pd

        frame = pd.DataFrame(self.rows, columns=list(ROW_FIELDS))
        frame["alpha"] = frame["alpha"].astype(float)
        frame["seed"] = frame["seed"].astype("Int64")
        return frame

    def summary(self, *, n_boot: int = 2000, seed: int = 0):
        """See :func:`summarize`."""
        return summarize(self.rows, n_boot=n_boot, seed=seed)

    def save(self, out_dir: str | Path, stem: str = "results") -> dict[str, Path]:
        """Write ``{stem}.jsonl``, ``{stem}.meta.json``, ``{stem}.parquet`` (pyarrow) atomically."""
        out = Path(out_dir)
        meta = {"format_version": RESULTS_FORMAT_VERSION, **self.metadata}
        paths = {"jsonl": out / f"{stem}.jsonl", "meta": out / f"{stem}.meta.json"}
        atomic_write_bytes(paths["jsonl"], _jsonl_bytes(self.rows))
        atomic_write_bytes(paths["meta"], json.dumps(meta, indent=2, sort_keys=True).encode())
        parquet = _parquet_bytes(self.rows, meta)
        if parquet is not None:
            paths["parquet"] = out / f"{stem}.parquet"
            atomic_write_bytes(paths["parquet"], parquet)
        return paths

    @classmethod
    def load(cls, path: str | Path) -> EvalResults:
        """Read ``results.jsonl`` (a file, or a folder holding it) and its ``.meta.json``."""
        path = Path(path)
        if path.is_dir():
            path = path / "results.jsonl"
        meta_path = path.with_name(path.name.removesuffix(".jsonl") + ".meta.json")
        if not path.is_file() or not meta_path.is_file():
            raise ArtifactError(
                f"no results at {path} (+ {meta_path.name}): pass the folder or .jsonl that "
                "EvalResults.save wrote"
            )
        try:
            rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
            meta = json.loads(meta_path.read_text("utf-8"))
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{path}: damaged results file ({err}); re-run the evaluation") from err
        if int(meta.pop("format_version", 0)) > RESULTS_FORMAT_VERSION:
            raise ArtifactError(f"{meta_path}: newer results format; upgrade unlock-lens")
        missing = [f for f in ROW_FIELDS if rows and f not in rows[0] and f not in OPTIONAL_ROW_FIELDS]
        if missing:
            raise ArtifactError(f"{path}: rows lack the fields {missing}; re-run the evaluation")
        return cls(rows, meta)
