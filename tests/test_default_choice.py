"""The rule that picks the library's default alignment from dev F (analysis.default_by_fidelity)."""

import pandas as pd

from analysis.default_by_fidelity import SHIPPED, choose


def dev_table(scores: dict[tuple[str, str, int], list[float]]) -> pd.DataFrame:
    rows = [{"case": f"case {i}", "alpha": 0.5, "data": k, "method": m, "map_rank": r, "F_dev": f}
            for (k, m, r), fs in scores.items() for i, f in enumerate(fs)]
    return pd.DataFrame(rows)


def test_the_median_over_cases_decides_and_overshoot_counts_as_one():
    table = dev_table({
        ("last", "svd", 16): [0.9, 0.1, 0.1],              # one good case: median 0.1
        ("continuations", "svd", 64): [0.8, 0.7, 0.75],    # median 0.75
        ("tokens", "svd", 16): [3.0, 3.0, 0.2],            # overshoot capped at 1: median 1.0
        SHIPPED: [0.5, 0.6, 0.55],
    })
    scores, pick = choose(table)
    assert pick == ("tokens", "svd", 16)
    assert scores.loc[("tokens", "svd", 16), "median_F_dev"] == 1.0
    assert list(scores.median_F_dev.round(2)) == [1.0, 0.75, 0.55, 0.1]


def test_the_shipped_default_stays_within_002_of_the_top_and_not_further():
    close = dev_table({("continuations", "svd", 64): [0.80, 0.81], SHIPPED: [0.79, 0.80]})
    assert choose(close)[1] == SHIPPED
    far = dev_table({("continuations", "svd", 64): [0.80, 0.81], SHIPPED: [0.70, 0.75]})
    assert choose(far)[1] == ("continuations", "svd", 64)


def test_settings_outside_the_grid_are_not_candidates():
    table = dev_table({("last", "cca", 16): [1.0, 1.0], SHIPPED: [0.2, 0.3]})
    assert choose(table)[1] == SHIPPED
