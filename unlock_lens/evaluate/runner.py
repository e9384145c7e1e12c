"""Evaluate a target under several conditions on the same problems with the same decoding.

Conditions (every one uses the same problems, greedy decoding, stop strings, max new tokens):

- ``direct``: the locked prompt (the pack's target format, else the model's default direct one);
- ``cot-prompt``: the unlocked prompt (the CoT trigger in the prompt), unsteered;
- ``steered``: the locked prompt steered with the pack's transferred key, once per alpha;
- ``native-key``: the locked prompt steered with the target's own prompt-driven key
  (extracted on the target, locked vs unlocked format, on ``key_questions``), once per alpha;
- ``random``: the locked prompt steered with random directions of the same per-layer norms as
  the steered ones (``controls.random_like``), once per alpha and seed;
- ``random-mapped``: random *source* directions with the key's per-layer norms carried through
  the pack's maps (``controls.random_mapped``), once per alpha and seed: the
  null that shares the transferred key's target subspace. The unit of a comparison with it is
  the direction: use >= 10 seeds and compare the key with their spread, not only their mean.

``evaluate`` returns an :class:`EvalResults` (rows + metadata); ``select_alpha`` picks alpha on
dev problems (disjoint from the eval ones) and records it in the pack.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unlock_lens.activations import Variant
from unlock_lens.artifacts import library_version
from unlock_lens.controls import random_mapped
from unlock_lens.errors import UnlockLensError
from unlock_lens.evaluate.answers import REL_TOL
from unlock_lens.evaluate.datasets import Problem, question_fingerprint
from unlock_lens.evaluate.results import CONDITIONS, EvalResults
from unlock_lens.evaluate.tasks import MATH_WORD_PROBLEMS, Task
from unlock_lens.generation import ENGINES, Generation, generate
from unlock_lens.masterkey import extract_masterkey
from unlock_lens.model_info import ModelInfo
from unlock_lens.prompts import (
    PromptFormat,
    SpecialTokens,
    default_formats,
    get_format,
    prompt_set_hash,
)
from unlock_lens.steer import Steering

__all__ = [
    "DEFAULT_STOP_STRINGS",
    "AlphaSelection",
    "Decoding",
    "evaluate",
    "parse_conditions",
    "select_alpha",
]

DECODING_ENGINES = (*ENGINES, "vllm")

#: Plain-text prompts end with "Question: ... Answer:"; a model that starts the next problem
#: or trails off into blank lines is cut there.
DEFAULT_STOP_STRINGS = ("\nQuestion:", "\n\n\n")


@dataclass(frozen=True)
class Decoding:
    """Greedy decoding settings shared by every condition (the paper: 512 tokens, batch 16).

    ``stop_loops``: end an output once it repeats itself (``generation.LoopStop``); off by
    default, as in the paper. With it, ``n_tokens`` counts up to the detected loop.
    ``engine``: ``"auto"``, ``"bridge"`` or ``"hf"`` (see ``generation.generate``; the same
    greedy tokens), or ``"vllm"`` (``backends.vllm.generate_on_vllm``; pass ``vllm=`` to
    ``evaluate``).
    """

    max_new_tokens: int = 512
    stop_strings: tuple[str, ...] = DEFAULT_STOP_STRINGS
    batch_size: int = 16
    stop_loops: bool = False
    engine: str = "auto"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise UnlockLensError(
                f"max_new_tokens and batch_size must be >= 1, got {self.max_new_tokens}, "
                f"{self.batch_size}"
            )
        if self.engine not in DECODING_ENGINES:
            raise UnlockLensError(f"unknown engine {self.engine!r}; choose one of {DECODING_ENGINES}")
        if self.engine == "vllm" and self.stop_loops:
            raise UnlockLensError("stop_loops is not available on vLLM: pass stop_loops=False")

    def to_dict(self) -> dict[str, Any]:
        return {"greedy": True, **asdict(self), "stop_strings": list(self.stop_strings)}


def parse_conditions(conditions: str | Sequence[str]) -> tuple[str, ...]:
    """``"direct,steered"`` or a list → validated, de-duplicated condition names."""
    names = conditions.split(",") if isinstance(conditions, str) else list(conditions)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise UnlockLensError(f"unknown condition(s) {unknown}; choose from {list(CONDITIONS)}")
    if not names:
        raise UnlockLensError(f"no conditions given; choose from {list(CONDITIONS)}")
    return tuple(dict.fromkeys(names))


def ids_hash(problems: Sequence[Problem]) -> str:
    """Short sha256 of the sorted problem ids (order-free provenance of a problem set)."""
    return hashlib.sha256("\n".join(sorted(p.id for p in problems)).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _check_problems(problems: Sequence[Problem], what: str = "problem list") -> None:
    if not problems:
        raise UnlockLensError(f"the {what} is empty: pass at least one problem")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise UnlockLensError(f"the {what} holds a problem id twice: ids must be unique")


def _check_alphas(alphas: Sequence[float]) -> list[float]:
    out = [float(a) for a in alphas]
    if not out:
        raise UnlockLensError("no alphas given: pass at least one steering strength")
    if not all(math.isfinite(a) for a in out):
        raise UnlockLensError(f"alphas must be finite, got {out}")
    return list(dict.fromkeys(out))


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    out = list(dict.fromkeys(int(s) for s in seeds))
    if not out:
        raise UnlockLensError("the random control needs at least one seed")
    return out


def _check_requests(
    conditions: Sequence[str], pack: Any, key_questions: Any, problems: Sequence[Problem]
) -> None:
    needs_pack = [c for c in conditions if c in ("steered", "random", "random-mapped")]
    if needs_pack and pack is None:
        raise UnlockLensError(f"conditions {needs_pack} need a CapabilityPack: pass pack=...")
    if "native-key" not in conditions:
        return
    if not key_questions:
        raise UnlockLensError(
            "the native-key condition needs key questions to extract the target's own key: "
            "pass key_questions=[...] (disjoint from the evaluation problems)"
        )
    evaluated = {question_fingerprint(p.question) for p in problems}
    shared = sum(question_fingerprint(q) in evaluated for q in key_questions)
    if shared:
        raise UnlockLensError(
            f"{shared} native-key questions are also evaluation problems: use disjoint key "
            "questions (e.g. a train split)"
        )


def check_disjoint(dev: Sequence[Problem], other: Sequence[Problem], names: str) -> None:
    """Refuse two problem sets sharing an id or a (normalised) question text."""
    shared_ids = {p.id for p in dev} & {p.id for p in other}
    shared_q = {question_fingerprint(p.question) for p in dev} & {
        question_fingerprint(p.question) for p in other
    }
    if shared_ids or shared_q:
        raise UnlockLensError(
            f"the {names} problems overlap ({len(shared_ids)} shared ids, {len(shared_q)} shared "
            "questions): keep them disjoint (split_problems does this)"
        )


# --------------------------------------------------------------------------------------------
# conditions
# --------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """One generation pass: a condition at one alpha / seed over all problems."""

    condition: str
    prompts: list[str]
    alpha: float | None = None
    seed: int | None = None
    steering: Steering | None = None

    @property
    def label(self) -> str:
        parts = [self.condition]
        if self.alpha is not None:
            parts.append(f"a={self.alpha:g}")
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return " ".join(parts)


def _native_base(model: Any, pack: Any, locked: PromptFormat, unlocked: PromptFormat,
                 key_questions: Sequence[str], batch_size: int) -> tuple[Steering, dict[str, Any]]:
    hook = pack.key.hook if pack is not None else "resid_post"
    key = extract_masterkey(Variant(model, locked), Variant(model, unlocked), key_questions,
                            hook=hook, batch_size=batch_size)
    dirs = {layer: key.directions[j] for j, layer in enumerate(key.layers)}
    settings = {} if pack is None else {"normalisation": pack.normalisation,
                                        "positions": pack.positions}
    info = {"n_prompts": key.n_prompts, "prompt_hash": key.prompt_hash,
            "effective_rank": key.effective_rank}
    return Steering(dirs, 1.0, hook=hook, **settings), info


def _plan(
    conditions: Sequence[str],
    locked_prompts: list[str],
    unlocked_prompts: list[str],
    alphas: list[float],
    seeds: list[int],
    pack: Any,
    native: Steering | None,
) -> list[_Run]:
    runs = []
    if "direct" in conditions:
        runs.append(_Run("direct", locked_prompts))
    if "cot-prompt" in conditions:
        runs.append(_Run("cot-prompt", unlocked_prompts))
    steered = pack.steering(alphas[0]) if pack is not None else None
    for alpha in alphas:
        if "steered" in conditions:
            runs.append(_Run("steered", locked_prompts, alpha, None, steered.scaled(alpha)))
        if "native-key" in conditions:
            runs.append(_Run("native-key", locked_prompts, alpha, None, native.scaled(alpha)))
        if "random" in conditions:
            runs.extend(_Run("random", locked_prompts, alpha, s, steered.scaled(alpha).randomized(s))
                        for s in seeds)
        if "random-mapped" in conditions:
            runs.extend(_Run("random-mapped", locked_prompts, alpha, s, Steering(
                random_mapped(pack.key, pack.maps, s), alpha, steered.normalisation, steered.positions, None,
                steered.hook)) for s in seeds)
    return runs


def _row(problem: Problem, run: _Run, gen: Generation, task: Task) -> dict[str, Any]:
    scored = task.score(problem, gen.text)
    return {
        "problem_id": problem.id,
        "condition": run.condition,
        "alpha": run.alpha,
        "seed": run.seed,
        "prompt": gen.prompt,
        "output": gen.text,
        "answer": scored.answer,
        "gold": problem.answer,
        "correct": bool(scored.correct),
        "n_tokens": gen.n_tokens,
        "cot_format": bool(scored.unlocked_format),
        "first_token_entropy": gen.first_token_entropy,
    }


def run_condition(
    model: Any,
    problems: Sequence[Problem],
    prompts: Sequence[str],
    *,
    condition: str,
    steering: Steering | None = None,
    alpha: float | None = None,
    seed: int | None = None,
    task: Task = MATH_WORD_PROBLEMS,
    decoding: Decoding = Decoding(),  # noqa: B008 - frozen dataclass
    vllm: Any = None,
    progress: bool = False,
    special_tokens: SpecialTokens = "model",
) -> list[dict[str, Any]]:
    """One condition over all problems: generate from ``prompts`` (steered if given), score
    with ``task``; one row per problem. Every condition of :func:`evaluate` runs through here.
    ``special_tokens``: how the prompts are tokenised (their format's)."""
    run = _Run(condition, list(prompts), alpha, seed, steering)
    if vllm is not None:
        from unlock_lens.backends.vllm import generate_on_vllm

        gens = generate_on_vllm(vllm, model, run.prompts, steering=run.steering,
                                max_new_tokens=decoding.max_new_tokens,
                                stop_strings=decoding.stop_strings, special_tokens=special_tokens)
    else:
        gens = generate(model, run.prompts, steering=run.steering,
                        max_new_tokens=decoding.max_new_tokens,
                        stop_strings=decoding.stop_strings, batch_size=decoding.batch_size,
                        stop_loops=decoding.stop_loops, engine=decoding.engine,
                        progress=run.label if progress else False, special_tokens=special_tokens)
    return [_row(p, run, g, task) for p, g in zip(problems, gens, strict=True)]


def _one_or_list(values: Sequence[str]) -> str | list[str]:
    unique = sorted(set(values))
    return unique[0] if len(unique) == 1 else unique


def _metadata(model: Any, problems: Sequence[Problem], pack: Any, task: Task, **fields: Any
              ) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "library_version": library_version(),
        "target": ModelInfo.of(model).to_dict(),
        "dataset": _one_or_list([p.dataset for p in problems]),
        "split": _one_or_list([p.split for p in problems]),
        "n_problems": len(problems),
        "problem_ids_hash": ids_hash(problems),
        "task": task.name,
        "answer_rel_tol": REL_TOL,
        "cot_format_rule": task.format_rule,
        **fields,
    }
    if pack is not None:
        meta.update(
            source=pack.key.source.to_dict(),
            source_unlocked_id=pack.key.source_unlocked_id,
            pack_hash=pack.content_hash,
            pack_alpha=pack.alpha,
            normalisation=pack.normalisation,
            positions=pack.positions,
            alignment=pack.alignment,
        )
    return meta


def _formats(model: Any, pack: Any, locked_format: Any, unlocked_format: Any
             ) -> tuple[PromptFormat, PromptFormat]:
    if locked_format is not None:
        locked = get_format(locked_format)
    elif pack is not None and pack.target_format:
        locked = PromptFormat.from_dict(pack.target_format)
    else:
        locked = default_formats(model.tokenizer)[0]
    unlocked = get_format(unlocked_format) if unlocked_format else locked.cot_counterpart()
    return locked, unlocked


def evaluate(
    model: Any,
    problems: Sequence[Problem],
    *,
    conditions: str | Sequence[str] = ("direct", "cot-prompt", "steered", "random"),
    pack: Any = None,
    alphas: Sequence[float] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    key_questions: Sequence[str] | None = None,
    locked_format: PromptFormat | str | None = None,
    unlocked_format: PromptFormat | str | None = None,
    decoding: Decoding = Decoding(),  # noqa: B008 - frozen dataclass
    vllm: Any = None,
    progress: bool = False,
    task: Task = MATH_WORD_PROBLEMS,
) -> EvalResults:
    """Generate and score every requested condition on ``problems``; one row per output.

    ``locked_format`` defaults to the pack's target format (else the model's default direct
    format, chat if it has a template); ``unlocked_format`` to its CoT counterpart.
    ``alphas`` defaults to ``[pack.alpha]``. ``vllm``: a ``VLLMSteeredGenerator`` of the same
    weights, used when ``decoding.engine == "vllm"`` (``model`` still encodes the prompts and
    extracts the native key).
    """
    conds = parse_conditions(conditions)
    if (decoding.engine == "vllm") != (vllm is not None):
        raise UnlockLensError("Decoding(engine='vllm') and vllm=VLLMSteeredGenerator(...) go together: "
                              "pass both or neither")
    _check_problems(problems)
    _check_requests(conds, pack, key_questions, problems)
    if pack is not None:
        pack.check_model(model)
    steered_like = any(c in conds for c in ("steered", "native-key", "random", "random-mapped"))
    if alphas is None:
        if steered_like and pack is None:
            raise UnlockLensError("pass alphas=[...]: there is no pack to take alpha from")
        alphas = [pack.alpha] if pack is not None else []
    alpha_list = _check_alphas(alphas) if steered_like else []
    seed_list = _check_seeds(seeds) if {"random", "random-mapped"} & set(conds) else []
    locked, unlocked = _formats(model, pack, locked_format, unlocked_format)
    if locked.special_tokens != unlocked.special_tokens:
        raise UnlockLensError(
            f"the locked and unlocked formats tokenise differently (special_tokens "
            f"{locked.special_tokens!r} vs {unlocked.special_tokens!r}): give both the same"
        )
    questions = [p.question for p in problems]
    locked_prompts = locked.render_all(questions, model.tokenizer)
    unlocked_prompts = unlocked.render_all(questions, model.tokenizer)
    native, native_info = None, None
    if "native-key" in conds:
        native, native_info = _native_base(model, pack, locked, unlocked, key_questions or [],
                                           decoding.batch_size)
    runs = _plan(conds, locked_prompts, unlocked_prompts, alpha_list, seed_list, pack, native)
    rows: list[dict[str, Any]] = []
    for run in runs:
        rows += run_condition(model, problems, run.prompts, condition=run.condition,
                              steering=run.steering, alpha=run.alpha, seed=run.seed, task=task,
                              decoding=decoding, vllm=vllm, progress=progress,
                              special_tokens=locked.special_tokens)
    meta = _metadata(
        model, problems, pack, task, conditions=list(conds), alphas=alpha_list, seeds=seed_list,
        decoding=decoding.to_dict(), locked_format=locked.to_dict(),
        unlocked_format=unlocked.to_dict(), native_key=native_info,
        locked_prompt_hash=prompt_set_hash(locked_prompts),
    )
    return EvalResults(rows, meta)


# --------------------------------------------------------------------------------------------
# alpha selection
# --------------------------------------------------------------------------------------------


@dataclass
class AlphaSelection:
    """The chosen alpha, dev accuracy per alpha, the record stored in the pack, the dev rows."""

    alpha: float
    accuracy: dict[float, float]
    record: dict[str, Any]
    results: EvalResults = field(repr=False)


def best_alpha(accuracy: dict[float, float]) -> float:
    """Highest accuracy; ties go to the smaller alpha."""
    if not accuracy:
        raise UnlockLensError("no alpha accuracies to choose from")
    return min(accuracy, key=lambda a: (-accuracy[a], a))


def select_alpha(
    model: Any,
    pack: Any,
    dev_problems: Sequence[Problem],
    alphas: Sequence[float],
    *,
    eval_problems: Sequence[Problem] | None = None,
    save_to: str | Path | None = None,
    locked_format: PromptFormat | str | None = None,
    decoding: Decoding = Decoding(),  # noqa: B008 - frozen dataclass
    vllm: Any = None,
    progress: bool = False,
) -> AlphaSelection:
    """Pick the steering alpha by steered accuracy on ``dev_problems`` (never the eval split).

    Refuses dev problems that share an id or question with ``eval_problems`` (when given).
    Sets ``pack.alpha`` and ``pack.alignment["alpha_selection"]`` (dev ids hash, per-alpha
    dev accuracy, decoding), and saves the pack to ``save_to`` if given.
    """
    _check_problems(dev_problems, "dev problem list")
    if eval_problems is not None:
        check_disjoint(dev_problems, eval_problems, "dev and eval")
    alpha_list = _check_alphas(alphas)
    results = evaluate(model, dev_problems, conditions=("steered",), pack=pack, alphas=alpha_list,
                       locked_format=locked_format, decoding=decoding, vllm=vllm, progress=progress)
    correct: dict[float, list[bool]] = {a: [] for a in alpha_list}
    for row in results.rows:
        correct[row["alpha"]].append(bool(row["correct"]))
    accuracy = {a: sum(c) / len(c) for a, c in correct.items()}
    chosen = best_alpha(accuracy)
    record = {
        "alpha": chosen,
        "criterion": "dev accuracy (steered), ties -> smaller alpha",
        "dev_accuracy": {f"{a:g}": accuracy[a] for a in alpha_list},
        "alphas": alpha_list,
        "n_dev": len(dev_problems),
        "dev_ids_hash": ids_hash(dev_problems),
        "dataset": results.metadata["dataset"],
        "split": results.metadata["split"],
        "decoding": decoding.to_dict(),
    }
    pack.alpha = chosen
    pack.alignment["alpha_selection"] = record
    if save_to is not None:
        pack.save(save_to)
    return AlphaSelection(chosen, accuracy, record, results)
