"""What each column and row of the tables ``unlock-lens`` prints means, in one line per table.

The one place these words live: the command line prints them under its tables, the HTML
reports under theirs, and README quotes them (``tests/test_legends.py`` holds README to them).
"""

from __future__ import annotations

TABLE_LEGENDS: dict[str, str] = {
    "demo": (
        "accuracy = exact answers among the n held-out problems, [ci_lo, ci_hi] its 95% Wilson "
        "interval; step_rate = share of outputs written step by step (the locked capability); "
        "cos_native = mean per-layer cosine of the transferred key to the target's own key; "
        "rank_among_nulls and p_direction = the transferred key's accuracy ranked among the "
        "random-mapped directions' (1 = above all; one-sided permutation p, the direction as "
        "unit); min_seed_accuracy, median_seed_accuracy, max_seed_accuracy = their spread; "
        "random-mapped direction = a random source direction with the key's per-layer norms "
        "carried through the same maps, one row per seed and their mean; NaN = does not apply "
        "to the row."
    ),
    "eval": (
        "accuracy = correct answers among n, [acc_lo, acc_hi] its 95% Wilson interval; cot_rate = "
        "share of outputs in CoT form (a lenient text heuristic), always beside multi_step_rate = share "
        "with two or more arithmetic steps a op b = c (stricter; agreement with hand labels in "
        "analysis/results/heuristics.md); degenerate_rate = share blank, cut to nothing by a stop "
        "string, or looping; mean_tokens = mean output length; diff = accuracy minus "
        "direct's on the same problems, [diff_lo, diff_hi] its paired-bootstrap 95% interval, "
        "mcnemar_p its exact McNemar p; steered = the pack's transferred key; native-key = the "
        "target's own key (the ceiling); random = random directions with the key's per-layer "
        "norms, one row per seed and a pooled row without a seed; random-mapped = random source "
        "directions carried through the pack's maps, rows likewise (compare the key with their "
        "spread: the direction is the unit); NaN = does not apply to the row."
    ),
    "run": (
        "Per alpha, the target under the direct prompt: F = (LL - LL_unsteered) / (LL_native - "
        "LL_unsteered), the share of the native key's gain in log-likelihood of the target's "
        "own-key greedy continuations that this row reproduces (1 = all, 0 = none, < 0 = away), "
        "[F_lo, F_hi] its 95% paired-bootstrap interval over questions; rank and p = this row "
        "ranked by F among the random-mapped null directions (1 = above all; one-sided "
        "permutation p, the direction as unit); first_token_kl = KL(the CoT prompt's first-token "
        "distribution || this row's), lower is closer, with kl_rank and kl_p ranked the same way; "
        "unsteered = no steering; native = the target's own key (the ceiling); transferred = the "
        "mapped key; -transferred = its negation; nulls qX = the X quantile of the null "
        "directions' F and the matching quantile of their KL; "
        "random-mapped = random source directions with the key's per-layer norms carried through "
        "the same maps (the control that shares the key's target subspace); NaN = does not apply "
        "to the row."
    ),
}

