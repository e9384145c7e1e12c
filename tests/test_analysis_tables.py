"""Tables the analysis scripts write from run records (analysis.axes, analysis.real_pair_generation)."""

import math

import pandas as pd

from analysis.axes import axis_table
from analysis.real_pair_generation import direction_section


def record(axis: str, kinds: dict) -> dict:
    return {"direction": "a -> b", "axis": axis, "alpha": 0.1, "native": {"effect": 0.3, "p": 0.09, "has_effect": True},
            "prompt": {"effect": 0.2}, "kinds": kinds}


def test_axis_table_has_one_separator_per_column_and_survives_an_axis_without_reference():
    full = {"F": 0.5, "F_lo": 0.4, "F_hi": 0.6, "p": 0.032, "share": 0.25, "anti_steerable": 0.125,
            "cosine_to_native": 0.7}
    lines = axis_table([record("cot", {"tokens+last": full}),
                        record("negative", {"tokens+last": {"F": math.nan}})], ["tokens+last"])
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    assert "0.50 [0.40, 0.60] (0.032)" in lines[2]
    assert "– [–, –] (–)" in lines[3]  # native key ended every output: nothing scored, no crash


def test_generation_table_ranks_a_key_against_random_directions_and_leaves_nan_unranked(tmp_path):
    rows = [{"alpha": None, "condition": "direct", "seed": None}]
    for s, cot in enumerate([0.1, 0.2, 0.3]):
        rows.append({"alpha": 0.05, "condition": "random-mapped", "seed": s, "cot_rate_non_degenerate": cot,
                     "degenerate_rate": 0.0})
    rows.append({"alpha": 0.05, "condition": "native-key", "cot_rate_non_degenerate": 0.25, "degenerate_rate": 0.5})
    rows.append({"alpha": 0.05, "condition": "transferred x", "cot_rate_non_degenerate": math.nan,
                 "degenerate_rate": 1.0})
    table = pd.DataFrame(rows)
    for m in ("blank_rate", "cut_by_stop_rate", "near_loop_rate", "loop_rate", "multi_step_rate_non_degenerate",
              "accuracy", "same_as_native"):
        table[m] = 0.0
    (tmp_path / "a_to_b").mkdir()
    table.to_csv(tmp_path / "a_to_b" / "generation.csv", index=False)
    (tmp_path / "a_to_b" / "generation.json").write_text(
        '{"n_eval_problems": 4, "max_new_tokens": 8, "n_random": 3, "seconds": 1}')
    lines = direction_section(tmp_path / "a_to_b")
    native = next(line for line in lines if "native-key" in line)
    assert "25% (2/4)" in native  # one random direction (30%) above it, ties count against it
    transferred = next(line for line in lines if "transferred x" in line)
    assert "100% (1/4)" in transferred and "| – |" in transferred
