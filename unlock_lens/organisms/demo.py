"""UNLOCK end to end on the organisms, in about a minute on a laptop CPU.

``run_demo()`` extracts the prompt-driven key of a source organism (``STEP`` trigger vs plain
prompt), aligns it into a target organism with maps fitted on **trigger-free** shared prompts,
steers the target at the last prompt token, and evaluates against the target's own direct and
triggered accuracy, its own key (same-model UNLOCK) and random directions with the same per-layer
norms (several seeds). It returns the results table (a pandas DataFrame) and can write an HTML
report with a plotly figure of accuracy by condition (Wilson 95% intervals).

The helpers (:func:`evaluate`, :func:`align_questions`, :func:`prompt_key`, :func:`transfer`)
are what ``analysis/organisms.py`` sweeps; they hold no method logic of their own: extraction,
alignment and steering are :func:`unlock_lens.masterkey.extract_masterkey`,
:func:`unlock_lens.unlock.build_pack` and :class:`unlock_lens.steer.Steering`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unlock_lens.activations import Variant
from unlock_lens.align.layers import AlignSpec
from unlock_lens.diagnostics.fidelity import direction_rank
from unlock_lens.errors import SanityCheckError
from unlock_lens.evaluate.results import summarize
from unlock_lens.evaluate.runner import Decoding, evaluate as evaluate_conditions, run_condition
from unlock_lens.masterkey import MasterKey, extract_masterkey
from unlock_lens.organisms.task import (
    LABELS,
    LOCKED,
    LONG_OPS,
    OPS,
    ORGANISM_TASK,
    SHORT_OPS,
    TRIGGER,
    UNLOCKED,
    PromptFormat,
    TaskResult,
    as_eval_problems,
    generate_problems,
    max_new_tokens,
)
from unlock_lens.pack import CapabilityPack
from unlock_lens.plots import accuracy_figure, write_report
from unlock_lens.steer import Steering
from unlock_lens.unlock import build_pack

#: settings chosen on the dev split by ``analysis/organisms.py`` (see organisms/RESULTS.md)
DEFAULTS: dict[str, Any] = {
    "source": "chain-s",
    "target": "chain-m",
    "method": "svd",
    "rank": 16,
    "alpha": 0.5,
    "n_key": 64,
    "n_align": 256,
}

REGIMES = ("trigger-free", "contrast-inclusive", "task-agnostic", "short-only")


# ---------------------------------------------------------------------------------------------
# data


def align_questions(regime: str, n: int, *, seed: int = 0) -> list[str]:
    """Shared alignment questions (rendered by the locked format: no trigger is added).

    - ``trigger-free``: held-out ``align`` problems, half short chains (answered directly) and
      half long chains (solved step by step): the reasoning mode varies with content only.
    - ``contrast-inclusive``: ``n/2`` short chains, each with and without the ``STEP`` trigger
      (the trigger is the dominant variance: the map lines up the trigger directions).
    - ``task-agnostic``: random strings over the task's characters (no task structure).
    - ``short-only``: the paper's data, the hard regime: ``n`` locked short chains, the kind
      the key is extracted on, all answered directly. The key's direction (trigger vs none)
      does not vary across these prompts' states, so the maps have nothing to line it up with.
    """
    if regime == "trigger-free":
        short = generate_problems(n - n // 2, split="align", n_ops=SHORT_OPS, seed=seed)
        long = generate_problems(n // 2, split="align", n_ops=LONG_OPS, seed=seed)
        out = [p.question for pair in zip(short, long, strict=False) for p in pair]
        return out + [p.question for p in short[len(long):]]
    if regime == "short-only":
        return [p.question for p in generate_problems(n, split="align", n_ops=SHORT_OPS, seed=seed)]
    if regime == "contrast-inclusive":
        qs = [p.question for p in generate_problems(n // 2, split="align", n_ops=SHORT_OPS,
                                                    seed=seed)]
        return [x for q in qs for x in (q, f"{TRIGGER} {q}")]
    if regime == "task-agnostic":
        rng = random.Random(f"task-agnostic/{seed}")
        chars = "0123456789" + LABELS + OPS + "=."
        return ["".join(rng.choice(chars) for _ in range(rng.randint(10, 24))) for _ in range(n)]
    raise ValueError(f"unknown alignment regime {regime!r}; choose one of {REGIMES}")


# ---------------------------------------------------------------------------------------------
# evaluation


@dataclass
class Condition:
    """One evaluated condition: its label, model, scores and (optional) extra columns."""

    condition: str
    model: str
    result: TaskResult
    extra: dict[str, Any]

    def row(self) -> dict[str, Any]:
        lo, hi = self.result.interval()
        return {
            "condition": self.condition, "model": self.model, "n": self.result.n,
            "accuracy": self.result.accuracy, "ci_lo": lo, "ci_hi": hi,
            "step_rate": self.result.step_rate, **self.extra,
        }


def decoding_for(problems: Sequence[Any], batch_size: int = 128) -> Decoding:
    """Greedy decoding long enough for the longest chain; no stop strings (EOS ends a row)."""
    return Decoding(max_new_tokens(max(p.n_ops for p in problems)), (), batch_size)


def evaluate(
    model: Any,
    problems: Sequence[Any],
    fmt: PromptFormat = LOCKED,
    steering: Steering | None = None,
    *,
    batch_size: int = 128,
) -> TaskResult:
    """Greedy completions of ``problems`` in ``fmt`` (steered if given), scored: one condition
    of the evaluation runner (:func:`~unlock_lens.evaluate.runner.run_condition`) as counts."""
    prompts = fmt.render_all([p.question for p in problems], model.tokenizer)
    rows = run_condition(model, as_eval_problems(problems), prompts, condition=fmt.name,
                         steering=steering, task=ORGANISM_TASK,
                         decoding=decoding_for(problems, batch_size))
    correct, step = [r["correct"] for r in rows], [r["cot_format"] for r in rows]
    return TaskResult(len(rows), sum(correct), sum(step), correct, step)


def prompt_key(model: Any, n: int = 64, *, seed: int = 0, aggregator: str = "mean") -> MasterKey:
    """Prompt-driven key: ``STEP`` trigger vs plain prompt on ``n`` short ``key`` problems."""
    qs = [p.question for p in generate_problems(n, split="key", n_ops=SHORT_OPS, seed=seed)]
    return extract_masterkey(Variant(model, LOCKED), Variant(model, UNLOCKED), qs,
                             aggregator=aggregator, batch_size=128)


def model_key(base: Any, post: Any, n: int = 64, *, seed: int = 0) -> MasterKey:
    """Model-driven key: post-trained minus base, both on the plain (trigger-free) prompt."""
    qs = [p.question for p in generate_problems(n, split="key", n_ops=SHORT_OPS, seed=seed)]
    return extract_masterkey(Variant(base, LOCKED), Variant(post, LOCKED), qs, batch_size=128)


def transfer(
    key: MasterKey,
    source: Any,
    target: Any,
    questions: Sequence[str],
    spec: AlignSpec = AlignSpec(),  # noqa: B008 - frozen dataclass
    *,
    alpha: float = 0.5,
) -> CapabilityPack:
    """Fit per-layer maps on ``questions`` (locked format on both sides) and pack the key
    (a prompt-driven key's ``continuations`` come from the source under the ``STEP`` trigger)."""
    unlocked = Variant(source, UNLOCKED) if key.contrast == "prompt" else None
    return build_pack(key, Variant(source, LOCKED), Variant(target, LOCKED), questions, spec,
                      alpha=alpha, batch_size=128, unlocked=unlocked)


def self_pack(key: MasterKey, model: Any, alpha: float) -> Steering:
    """Steering of ``model`` with its own key (same-model UNLOCK, no map)."""
    return Steering({layer: key.direction(layer) for layer in key.layers}, alpha=alpha)


def cosine_to_native(directions: Mapping[int, Tensor], native: MasterKey) -> dict[int, float]:
    """Per target layer: cosine of a transferred direction to the target's own key."""
    return {
        t: float(torch.nn.functional.cosine_similarity(v.float(), native.direction(t).float(), 0))
        for t, v in sorted(directions.items())
    }


def random_controls(directions: Mapping[int, Tensor], alpha: float,
                    seeds: Sequence[int]) -> list[Steering]:
    """Random directions with the same per-layer norms (one Steering per seed)."""
    return [Steering(directions, alpha=alpha).randomized(s) for s in seeds]


# ---------------------------------------------------------------------------------------------
# the demo


#: the organisms were trained to solve every triggered problem (1.00 on dev, organism.json)
MIN_TRIGGER_ACCURACY = 0.9


def check_trigger_rows(accuracy: Mapping[str, float]) -> None:
    """Refuse to go on when a model's trigger row is not near 100%.

    The organisms answer the ``STEP`` prompt correctly on every held-out problem; less
    means generation itself is broken (it was, silently, under transformers 5.24 before
    :mod:`unlock_lens.compat`), and every other row of the table would be wrong with it.
    """
    bad = {m: float(a) for m, a in accuracy.items() if a < MIN_TRIGGER_ACCURACY}
    if bad:
        found = ", ".join(f"{m} {a:.0%}" for m, a in bad.items())
        raise SanityCheckError(
            f"sanity check failed: trigger-prompt accuracy {found}, expected >= "
            f"{MIN_TRIGGER_ACCURACY:.0%}; generation is broken, not the method. Install the tested "
            "set (pip install -r requirements.lock) and run python -m pytest tests/test_decoding_oracle.py"
        )


def run_demo(
    source: str | None = None,
    target: str | None = None,
    *,
    n_test: int = 200,
    n_key: int | None = None,
    n_align: int | None = None,
    rank: int | None = None,
    alpha: float | None = None,
    method: str | None = None,
    n_random: int = 10,
    html: str | Path | None = None,
    verbose: bool = True,
) -> Any:
    """Extract → align (trigger-free) → steer → evaluate with controls; returns a DataFrame.

    Rows: source direct / trigger, target direct / trigger, target + its own key (same-model
    UNLOCK), target + the transferred key (cross-model UNLOCK, trigger-free fit) and one row per
    random-mapped null direction (random source directions with the key's per-layer norms,
    through the same maps; ``n_random`` of them) plus their mean with the spread (min, median,
    max over directions). ``n_test`` short held-out ``test`` problems. Columns on the key's row:
    ``cos_native``, the mean per-layer cosine of the transferred key to the target's own key;
    ``rank_among_nulls`` and ``p_direction``, the key's accuracy ranked among the null
    directions' (1 = above all; one-sided permutation p, the direction as unit). ``html``
    writes a plotly report.
    """
    import pandas as pd

    from unlock_lens.organisms import load_organism

    s_name = source or DEFAULTS["source"]
    t_name = target or DEFAULTS["target"]
    rank = DEFAULTS["rank"] if rank is None else rank
    alpha = DEFAULTS["alpha"] if alpha is None else alpha
    method = method or DEFAULTS["method"]
    n_key = n_key or DEFAULTS["n_key"]
    n_align = n_align or DEFAULTS["n_align"]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    src, tgt = load_organism(s_name), load_organism(t_name)
    test = generate_problems(n_test, split="test", n_ops=SHORT_OPS)
    rows: list[Condition] = []
    labels = {"direct": "direct", "cot-prompt": "trigger", "native-key": "UNLOCK same-model (own key)",
              "steered": f"UNLOCK {s_name}->{t_name} (trigger-free fit)"}

    def add(model_name: str, summary: Any, **extra: Any) -> None:
        """One table row from a row of the runner's summary."""
        cond = labels.get(summary["condition"])
        if summary["condition"] == "random-mapped":
            cond = (f"random-mapped direction (mean of {n_random})" if pd.isna(summary["seed"])
                    else f"random-mapped direction (seed {int(summary['seed'])})")
        n = int(summary["n"])
        res = TaskResult(n, int(summary["k"]), round(summary["cot_rate"] * n), [], [])
        rows.append(Condition(cond, model_name, res, extra))
        if verbose:
            lo, hi = res.interval()
            print(f"{cond:<34} {model_name:<8} acc {res.accuracy:6.1%} [{lo:.2f}, {hi:.2f}]  "
                  f"step {res.step_rate:6.1%}", flush=True)

    common = {"locked_format": LOCKED, "unlocked_format": UNLOCKED, "task": ORGANISM_TASK,
              "decoding": decoding_for(test)}
    problems = as_eval_problems(test)
    plain = {m: summarize(evaluate_conditions(model, problems, conditions=("direct", "cot-prompt"),
                                              **common).rows)
             for m, model in ((s_name, src), (t_name, tgt))}
    for m in (s_name, t_name):
        for cond in ("direct", "cot-prompt"):
            add(m, plain[m][plain[m].condition == cond].iloc[0])
    check_trigger_rows({m: plain[m].set_index("condition").loc["cot-prompt", "accuracy"]
                        for m in (s_name, t_name)})

    native = prompt_key(tgt, n_key)
    key = prompt_key(src, n_key)
    pack = transfer(key, src, tgt, align_questions("trigger-free", n_align), AlignSpec(method, rank),
                    alpha=alpha)
    cos = cosine_to_native(pack.target_directions(), native)
    mean_cos = sum(cos.values()) / len(cos)
    key_qs = [p.question for p in generate_problems(n_key, split="key", n_ops=SHORT_OPS)]
    steered = summarize(evaluate_conditions(
        tgt, problems, conditions=("native-key", "steered", "random-mapped"), pack=pack,
        alphas=[alpha], seeds=range(n_random), key_questions=key_qs, **common).rows)
    add(t_name, steered[steered.condition == "native-key"].iloc[0])
    randoms = steered[steered.condition == "random-mapped"]
    per_direction = randoms[randoms.seed.notna()].accuracy.astype(float)
    key_row = steered[steered.condition == "steered"].iloc[0]
    # the unit of this comparison is the direction: the key's accuracy ranked among the nulls'
    rank, p = direction_rank(float(key_row["accuracy"]), per_direction.tolist())
    add(t_name, key_row, cos_native=mean_cos, rank_among_nulls=rank, p_direction=p)
    for _, row in randoms[randoms.seed.notna()].iterrows():
        add(t_name, row)
    add(t_name, randoms[randoms.seed.isna()].iloc[0], min_seed_accuracy=float(per_direction.min()),
        median_seed_accuracy=float(per_direction.median()),
        max_seed_accuracy=float(per_direction.max()))
    df = pd.DataFrame([r.row() for r in rows])
    df.attrs.update(source=s_name, target=t_name, rank=rank, alpha=alpha, method=method,
                    n_key=n_key, n_align=n_align, seconds=round(time.perf_counter() - t0, 1),
                    cos_native_per_layer=cos)
    if verbose:
        print(f"done in {df.attrs['seconds']} s (rank {rank}, alpha {alpha}, {method}, "
              f"cos to native key {mean_cos:.2f})")
    if html is not None:
        meta = ", ".join(f"{k}={v}" for k, v in df.attrs.items() if k != "cos_native_per_layer")
        write_report(html, "UNLOCK on the organisms", [accuracy_figure(df)], df, meta)
    return df
