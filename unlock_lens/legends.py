"""What each column and row of the tables ``unlock-lens`` prints means, in one line per table.

The one place these words live: the command line prints them under its tables, the HTML
reports under theirs, and README quotes them (``tests/test_legends.py`` holds README to them).
"""

from __future__ import annotations

CONTROLS = (
    "random = random directions with the key's per-layer norms, drawn in the target (one per seed); "
    "random-mapped = random source directions carried through the same maps as the key (the "
    "control that shares the key's target subspace)"
)

TABLE_LEGENDS: dict[str, str] = {
    "demo": (
        "accuracy = exact answers among the n held-out problems, [ci_lo, ci_hi] its 95% Wilson "
        "interval; step_rate = share of outputs written step by step (the locked capability); "
        "cos_native = mean per-layer cosine of the transferred key to the target's own key; "
        "max_seed_accuracy = the best single random seed; random direction = a random direction "
        "with the key's per-layer norms, one row per seed and their mean; NaN = does not apply "
        "to the row."
    ),
    "eval": (
        "accuracy = correct answers among n, [acc_lo, acc_hi] its 95% Wilson interval; cot_rate = "
        "share of outputs in CoT form; mean_tokens = mean output length; diff = accuracy minus "
        "direct's on the same problems, [diff_lo, diff_hi] its paired-bootstrap 95% interval, "
        "mcnemar_p its exact McNemar p; steered = the pack's transferred key; native-key = the "
        "target's own key (the ceiling); random = random directions with the key's per-layer "
        "norms, one row per seed and a pooled row without a seed; NaN = does not apply to the row."
    ),
    "run": (
        "One row per condition, the target's first answer token under the direct prompt: "
        "kl_to_unlocked = KL(its distribution under the CoT prompt || this row's), lower is "
        "closer to the unlocked behaviour; top5_unlocked_mass = probability this row puts on the "
        "CoT prompt's 5 likeliest tokens; entropy in nats; unlocked-prompt = the CoT prompt "
        "itself (the goal, KL 0); direct = unsteered; steered = the transferred key; native = "
        f"the target's own key (the ceiling); {CONTROLS}; NaN = does not apply to the row."
    ),
}

