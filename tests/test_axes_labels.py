"""Each behaviour-axis scorer against the committed hand labels (tests/fixtures/axes_labels.jsonl).

The labels were written by reading real SmolLM2-135M-Instruct / Gemma-3-270M outputs, blind to
the scorers (``analysis/results/axes_labels.md``: guide, table, reading). A scorer that breaks,
or a threshold moved far, drops its agreement below the floor and fails here.
"""

from __future__ import annotations

import pytest

from analysis.axes_labels import FIXTURE, agreement, best_threshold, load_labels
from unlock_lens.axes import load_axes

#: agreement (share of outputs where ``Axis.present`` equals the hand label) every scorer must reach
FLOOR = 0.8
#: and Cohen's kappa: most axes have few positives, so a scorer that always says "absent" would
#: pass the agreement floor alone (kappa 0)
KAPPA_FLOOR = 0.4
#: axes whose scorer does not reach the floors on these labels, with the reason (see the report)
BELOW_FLOOR: dict[str, str] = {
    "positive": "VADER scores words, the labels tone: polite 'appreciation', 'helpful' text scores high, "
                "enthusiasm without sentiment words ('so much more than just books') low (agreement 0.74)",
    "formal": "Coleman-Liau grade measures word and sentence length, not register: plain formal "
              "expository text grades 5-14, under the threshold 14 (agreement 0.57, kappa 0.12); no "
              "threshold fits both these labels and the written neutral examples of tests/test_axes.py",
}

ROWS = load_labels(FIXTURE)
AXES = load_axes()


def _axis_params() -> list[object]:
    return [pytest.param(name, marks=pytest.mark.xfail(reason=BELOW_FLOOR[name], strict=True))
            if name in BELOW_FLOOR else name for name in AXES]


def test_every_axis_has_30_labels_of_both_kinds():
    for name in AXES:
        labels = [r["label"] for r in ROWS if r["axis"] == name]
        assert len(labels) >= 30, name
        assert 0 < sum(labels) < len(labels), f"{name}: only one label value"


@pytest.mark.parametrize("name", _axis_params())
def test_scorer_agrees_with_hand_labels(name):
    rows = [r for r in ROWS if r["axis"] == name]
    result = agreement([r["label"] for r in rows], AXES[name].present([r["output"] for r in rows]))
    assert result.agreement >= FLOOR and result.kappa >= KAPPA_FLOOR, result


def test_agreement_counts_and_kappa_against_hand_computation():
    labels = [True, True, False, False, False, True]
    calls = [True, False, False, True, False, True]
    got = agreement(labels, calls)
    assert (got.tp, got.fp, got.fn, got.tn) == (2, 1, 1, 2)
    assert got.agreement == pytest.approx(4 / 6)
    # p_o = 4/6, p_e = (3/6)(3/6) + (3/6)(3/6) = 1/2 -> kappa = (2/3 - 1/2) / (1/2) = 1/3
    assert got.kappa == pytest.approx(1 / 3)


def test_best_threshold_separates_when_it_can_and_prefers_the_current_on_ties():
    scores = [0.1, 0.2, 0.6, 0.9]
    assert best_threshold(scores, [False, False, True, True], current=0.95) == pytest.approx(0.4)
    # every threshold in (0.2, 0.6] agrees fully: the current one is kept
    assert best_threshold(scores, [False, False, True, True], current=0.5) == 0.5
