"""The behaviour-axis scorers against hand labels: agreement, Cohen's kappa, confusion counts.

    python -m analysis.axes_labels            # table -> analysis/results/axes_labels.md (between markers)

The hand labels (``tests/fixtures/axes_labels.jsonl``) were written by reading each output
(``analysis.axes_outputs``), blind to every scorer, following the guide at the top of
``analysis/results/axes_labels.md``. For each axis this scores every labelled output with
``Axis.present`` (the registry's threshold) and reports the share of outputs on which the
scorer and the label agree, Cohen's kappa (scikit-learn's) and the confusion counts.

It also asks whether a threshold is mis-set, without fitting on the rows it reports: the rows are
halved by request (:data:`FIT_REQUESTS`: every other request of ``analysis.axes_outputs``'s
list), the threshold that agrees best with the labels is chosen on the *fit* half, and the
registry's and the chosen threshold are both scored on the other (*check*) half.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.axes_outputs import REQUESTS
from unlock_lens.axes import Axis, load_axes
from unlock_lens.errors import UnlockLensError
from unlock_lens.evaluate.stats import cohen_kappa, confusion_counts

FIXTURE = Path("tests/fixtures/axes_labels.jsonl")
REPORT = Path("analysis/results/axes_labels.md")
FIXTURE_FIELDS = ("axis", "model", "variant", "request", "output", "label")
#: the threshold-fitting half (every other request); the rest is the check half
FIT_REQUESTS = frozenset(REQUESTS[::2])
TABLE_START, TABLE_END = "<!-- agreement table: start -->", "<!-- agreement table: end -->"


def load_labels(path: Path = FIXTURE) -> list[dict[str, Any]]:
    """The labelled rows; each has :data:`FIXTURE_FIELDS` (and ``note``, ``prefix`` where set)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        if missing := [f for f in FIXTURE_FIELDS if f not in row]:
            raise UnlockLensError(f"{path} row {i} lacks {missing}: each row needs {FIXTURE_FIELDS}")
        if not isinstance(row["label"], bool):
            raise UnlockLensError(f"{path} row {i}: label must be true or false, got {row['label']!r}")
    return rows


@dataclass(frozen=True)
class Agreement:
    """A scorer's binary calls against hand labels on ``n`` outputs."""

    n: int
    agreement: float
    kappa: float
    tp: int
    fp: int
    fn: int
    tn: int


def agreement(labels: Sequence[bool], predicted: Sequence[bool]) -> Agreement:
    """Share of equal calls, Cohen's kappa and the confusion counts (label = truth)."""
    if len(labels) != len(predicted) or not labels:
        raise UnlockLensError(f"{len(labels)} labels against {len(predicted)} calls: need equal, non-zero counts")
    counts = confusion_counts(labels, predicted)
    tp, tn = counts.get((True, True), 0), counts.get((False, False), 0)
    return Agreement(n=len(labels), agreement=(tp + tn) / len(labels), kappa=cohen_kappa(labels, predicted),
                     tp=tp, fp=counts.get((False, True), 0), fn=counts.get((True, False), 0), tn=tn)


def best_threshold(scores: Sequence[float], labels: Sequence[bool], current: float) -> float:
    """The threshold (``score >= t`` is present) that agrees with the most labels: midpoints
    between adjacent distinct scores, and the current one; ties go to the one nearest ``current``."""
    values = sorted(set(scores))
    candidates = [current, *((a + b) / 2 for a, b in zip(values, values[1:], strict=False))]
    if values:
        candidates += [values[0], values[-1] + 1e-9]

    def hits(t: float) -> int:
        return sum((s >= t) == y for s, y in zip(scores, labels, strict=True))

    return max(candidates, key=lambda t: (hits(t), -abs(t - current)))


def axis_rows(axis: Axis, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row: the registry threshold on all rows, and the half-split threshold check."""
    texts = [r["output"] for r in rows]
    labels = [r["label"] for r in rows]
    scores = axis.score(texts)
    present = axis.present(texts)
    whole = agreement(labels, present)
    fit = [i for i, r in enumerate(rows) if r["request"] in FIT_REQUESTS]
    check = [i for i, r in enumerate(rows) if r["request"] not in FIT_REQUESTS]
    proposed = best_threshold([scores[i] for i in fit], [labels[i] for i in fit], axis.threshold)
    check_labels = [labels[i] for i in check]
    return {
        "axis": axis.name, "n": whole.n, "present": sum(labels), "agreement": whole.agreement,
        "kappa": whole.kappa, "tp": whole.tp, "fp": whole.fp, "fn": whole.fn, "tn": whole.tn,
        "threshold": axis.threshold, "proposed": proposed,
        "check_n": len(check),
        "check_current": agreement(check_labels, [present[i] for i in check]).agreement,
        "check_proposed": agreement(check_labels, [scores[i] >= proposed for i in check]).agreement,
    }


def agreement_table(rows: list[dict[str, Any]], axes: dict[str, Axis]) -> list[dict[str, Any]]:
    """One row per labelled axis, in registry order."""
    labelled = {r["axis"] for r in rows}
    if unknown := labelled - set(axes):
        raise UnlockLensError(f"labels for axes the registry lacks: {sorted(unknown)}")
    return [axis_rows(axes[name], [r for r in rows if r["axis"] == name]) for name in axes if name in labelled]


def markdown(table: list[dict[str, Any]]) -> str:
    head = ("| axis | n | labelled present | agreement | Cohen's κ | TP | FP | FN | TN | threshold | "
            "threshold fitted on fit half | check-half agreement: registry / fitted (n) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [
        f"| {t['axis']} | {t['n']} | {t['present']} | {t['agreement']:.2f} | {t['kappa']:.2f} | {t['tp']} | "
        f"{t['fp']} | {t['fn']} | {t['tn']} | {t['threshold']:g} | {t['proposed']:.3g} | "
        f"{t['check_current']:.2f} / {t['check_proposed']:.2f} ({t['check_n']}) |"
        for t in table
    ]
    return head + "\n".join(lines) + "\n"


def write_table(text: str, report: Path = REPORT) -> None:
    """Replace the table between the markers in ``report`` (appended, with markers, if absent)."""
    doc = report.read_text() if report.exists() else ""
    block = f"{TABLE_START}\n{text}{TABLE_END}"
    if TABLE_START in doc and TABLE_END in doc:
        before, rest = doc.split(TABLE_START, 1)
        doc = before + block + rest.split(TABLE_END, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    report.write_text(doc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=Path, default=FIXTURE)
    p.add_argument("--report", type=Path, default=REPORT)
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args()
    text = markdown(agreement_table(load_labels(args.labels), load_axes()))
    print(text)
    if not args.no_write:
        write_table(text, args.report)


if __name__ == "__main__":
    main()
