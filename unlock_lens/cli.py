"""unlock-lens command line: demo | extract | align | steer | generate | eval | export | run | reproduce.

Models are hub names, local HF directories, .gguf files or registry short names
(smollm2-135m-instruct, gemma-3-270m). Key and alignment questions come from disjoint
seeded splits of a dataset (--dataset gsm8k --split train) so they never overlap.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from unlock_lens.activations import Variant
from unlock_lens.errors import UnlockLensError
from unlock_lens.prompts import get_format

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, rich_markup_mode=None)

Model = Annotated[str, typer.Option(help="hub id, local HF dir, .gguf file or registry name")]
Method = Annotated[str, typer.Option(help="alignment method: svd (the authors'), procrustes, cca, ridge, identity")]
Rank = Annotated[int, typer.Option(help="rank k of the map (top-k subspaces); at most the number of alignment questions")]
FitRank = Annotated[int | None, typer.Option(
    help="rank k of the map; default 256 on token data (lowered to d with a warning), 16 with --data last "
         "(at most the alignment questions there)")]
Data = Annotated[str, typer.Option(
    help="alignment data: tokens+last (default: token pairs at shared character ends plus the last "
         "token), tokens, text, continuations (the source's CoT outputs read after the direct prompt), "
         "or last (the paper's: the last prompt token)")]
MaxPairs = Annotated[int, typer.Option(help="cap on token / text pairs (drawn with --seed)")]
Alpha = Annotated[float, typer.Option(help="steering strength (negative steers away: removes the capability)")]
AlphaOr = Annotated[float | None, typer.Option(help="steering strength (default: the pack's)")]
Normalisation = Annotated[str, typer.Option(help="edit: rotate (the paper's, norm-preserving), unit, resid, raw, clamp")]
Positions = Annotated[str, typer.Option(help="where to edit: last_prompt (the paper's), prompt, final, all")]


def _questions(dataset: str, split: str, role: str, n: int, seed: int) -> list[str]:
    from unlock_lens.evaluate.datasets import TRAIN_SPLIT_FRACTIONS, load_dataset, split_problems

    parts = split_problems(load_dataset(dataset, split), fractions=TRAIN_SPLIT_FRACTIONS, seed=seed)
    chosen = parts[role][:n]
    if len(chosen) < n:
        typer.secho(f"only {len(chosen)} {role} questions available (asked for {n})", fg="yellow")
    return [p.question for p in chosen]


# ---- checks that run before any model is loaded -------------------------------------------


def _check_dataset(name: str, flag: str = "--dataset") -> None:
    from unlock_lens.evaluate.datasets import DATASETS

    if name not in DATASETS:
        raise UnlockLensError(f"{flag} {name!r} is not a known dataset; choose one of {sorted(DATASETS)}")


def _check_out_file(path: Path, flag: str = "--out") -> None:
    if path.is_dir():
        raise UnlockLensError(f"{flag} {path} is a folder: give a file path, e.g. {path / 'out.jsonl'}")


def _check_positive(value: int, flag: str) -> None:
    if value < 1:
        raise UnlockLensError(f"{flag} must be at least 1, got {value}")


def _check_alpha(alpha: float | None, flag: str = "--alpha") -> None:
    if alpha is not None and not math.isfinite(alpha):
        raise UnlockLensError(f"{flag} must be a finite number, got {alpha}")


def _check_steering(normalisation: str, positions: str) -> None:
    """The library's own checks of the edit and the position rule, with the flag named."""
    from unlock_lens.interventions import check_rule, get_edit

    for flag, check, value in (("--normalisation", get_edit, normalisation),
                               ("--positions", check_rule, positions)):
        try:
            check(value)
        except UnlockLensError as err:
            raise UnlockLensError(f"{flag}: {err}") from None


def _check_method(method: str) -> None:
    from unlock_lens.align import ALIGNMENT_METHODS

    if method not in ALIGNMENT_METHODS:
        raise UnlockLensError(f"--method {method!r} is not an alignment method; choose one of "
                              f"{sorted(ALIGNMENT_METHODS)}")


def _fit_spec(pipe: Any, method: str, rank: int | None, data: str, max_pairs: int, n: int, seed: int) -> Any:
    """The AlignSpec of ``--data`` / ``--rank`` / ``--max-pairs``, checked before any model loads
    (``pipe=None``: check only). One pair per question for ``last``, so its rank is bounded by n."""
    from dataclasses import replace

    from unlock_lens.alignment_data import parse_data

    last_only = parse_data(data) == ("last",)
    _check_positive(max_pairs, "--max-pairs")
    rank = rank or (16 if last_only else 256)
    if last_only:
        _check_fit(method, rank, n)
    else:
        _check_method(method)
        _check_positive(rank, "--rank")
        _check_positive(n, "--n")
    if pipe is None:
        return None
    return replace(pipe.spec, method=method, rank=rank, data=data,
                   max_pairs=None if last_only else max_pairs, data_seed=seed)


def _check_fit(method: str, rank: int, n: int) -> None:
    """A fit that would fail after loading and capturing fails here instead."""
    _check_method(method)
    _check_positive(rank, "--rank")
    _check_positive(n, "--n")
    if rank > n:
        raise UnlockLensError(f"--rank {rank} is more than the {n} alignment questions (--n): a rank-k "
                              "fit needs at least k questions; lower --rank or raise --n")
    if rank == n:
        typer.secho(f"warning: --rank {rank} equals --n: the map interpolates its {n} questions "
                    "(train error 0); use a lower --rank or more questions", fg="yellow", err=True)


def _alpha_note(alpha: float) -> str:
    return f"alpha {alpha:g}" + (" (negative: steers away, removing the capability)" if alpha < 0 else "")


def _load(name: str, device: str):  # noqa: ANN202
    from unlock_lens.models import load_model

    return load_model(name, device=device)


@app.command()
def extract(
    model: Model,
    out: Annotated[Path, typer.Option(help="where to write the MasterKey (.safetensors)")],
    unlocked_model: Annotated[str | None, typer.Option(help="post-trained model: a model-driven key")] = None,
    dataset: str = "gsm8k",
    split: str = "train",
    n: Annotated[int, typer.Option(help="key questions (the key split of --dataset/--split)")] = 256,
    locked_format: Annotated[str | None, typer.Option(help="capability-absent prompt format (default: direct, chat if the model has a template)")] = None,
    unlocked_format: Annotated[str | None, typer.Option(help="capability-present prompt format (default: cot)")] = None,
    aggregator: Annotated[str, typer.Option(help="mean of differences (the paper's) or pca")] = "mean",
    capability: Annotated[str, typer.Option(help="a name recorded in the key")] = "cot",
    batch_size: int = 16,
    seed: int = 0,
    device: str = "cpu",
) -> None:
    """Extract a MasterKey from a source (prompt- or model-driven contrast)."""
    from unlock_lens.unlock import Unlock

    _check_dataset(dataset)
    _check_positive(n, "--n")
    _check_out_file(out)

    src = _load(model, device)
    pipe = Unlock(
        source=src, target=src, source_unlocked=_load(unlocked_model, device) if unlocked_model else None,
        locked_format=locked_format, unlocked_format=unlocked_format, aggregator=aggregator,  # type: ignore[arg-type]
        batch_size=batch_size, progress=True,
    )
    key = pipe.extract(_questions(dataset, split, "key", n, seed), capability=capability)
    key.save(out)
    typer.echo(f"MasterKey: {len(key.layers)} layers x d={key.directions.shape[1]}, "
               f"n={key.n_prompts}, {key.contrast}-driven, {key.aggregator} -> {out}")


@app.command()
def align(
    key: Annotated[Path, typer.Option(help="MasterKey file from `extract`")],
    source: Model,
    target: Model,
    out: Annotated[Path, typer.Option(help="where to write the CapabilityPack")],
    dataset: str = "gsm8k",
    split: str = "train",
    n: Annotated[int, typer.Option(help="alignment questions (the align split, disjoint from the key's)")] = 256,
    method: Method = "svd",
    rank: FitRank = None,
    data: Data = "tokens+last",
    max_pairs: MaxPairs = 4000,
    alpha: Alpha = 0.1,
    normalisation: Normalisation = "rotate",
    positions: Positions = "last_prompt",
    target_format: str | None = None,
    batch_size: int = 16,
    seed: int = 0,
    device: str = "cpu",
) -> None:
    """Map a MasterKey into a target model; write a CapabilityPack."""
    from unlock_lens.masterkey import MasterKey
    from unlock_lens.prompts import PromptFormat
    from unlock_lens.unlock import Unlock

    _check_dataset(dataset)
    _fit_spec(None, method, rank, data, max_pairs, n, seed)
    _check_steering(normalisation, positions)
    _check_alpha(alpha)
    _check_out_file(out)
    mk = MasterKey.load(key)
    fmt = PromptFormat.from_dict(mk.unlocked_format if mk.contrast == "model" else mk.locked_format)  # type: ignore[arg-type]
    pipe = Unlock(
        source=_load(source, device), target=_load(target, device),
        locked_format=fmt, unlocked_format=fmt, target_format=target_format, method=method,
        alpha=alpha, normalisation=normalisation, positions=positions,  # type: ignore[arg-type]
        batch_size=batch_size, progress=True,
    )
    spec = _fit_spec(pipe, method, rank, data, max_pairs, n, seed)
    pack = pipe.align(mk, _questions(dataset, split, "align", n, seed), spec)
    pack.save(out)
    errs = [m.metrics.get("train_relative_error", float("nan")) for m in pack.maps.values()]
    held_out = _held_out_error(pipe, pack, _questions(dataset, split, "dev", 32, seed))
    typer.echo(f"CapabilityPack: {len(pack.maps)} target layers, {method} rank "
               f"{next(iter(pack.maps.values())).rank} on {data} data, "
               f"{_alpha_note(alpha)}, mean relative error: train {sum(errs) / len(errs):.3f}, "
               f"held-out {held_out:.3f} (32 dev questions) -> {out}")


def _held_out_error(pipe: Any, pack: Any, questions: list[str]) -> float:
    """Mean over target layers of the maps' relative error on questions they were not fitted on
    (a rank-n fit has train error 0; this says what it does elsewhere)."""
    from unlock_lens.activations import capture_pair
    from unlock_lens.align.layers import LayerPairing

    pairing = LayerPairing({t: m.source_layer for t, m in pack.maps.items()})
    H_s, H_t = capture_pair(pipe.locked, pipe.target_variant, questions, pairing.source_layers,
                            pairing.target_layers, hook=pack.key.hook, final_layer=pack.key.final_layer)
    errs = [m.relative_error(H_s[:, pairing.source_layers.index(m.source_layer)], H_t[:, j])
            for j, m in enumerate(pack.maps[t] for t in pairing.target_layers)]
    return sum(errs) / len(errs)


@app.command()
def steer(
    pack: Annotated[Path, typer.Option(help="CapabilityPack file")],
    target: Model,
    question: Annotated[list[str], typer.Option(help="a question (repeatable)")],
    alpha: AlphaOr = None,
    max_new_tokens: int = 128,
    device: str = "cpu",
) -> None:
    """Print unsteered and steered greedy completions side by side."""
    from unlock_lens.generation import generate
    from unlock_lens.pack import CapabilityPack
    from unlock_lens.prompts import PromptFormat, get_format

    if not question or any(not q.strip() for q in question):
        raise UnlockLensError("--question is empty: give the question text, e.g. --question 'What is 17 * 3?'")
    _check_alpha(alpha)
    _check_positive(max_new_tokens, "--max-new-tokens")
    cp = CapabilityPack.load(pack)
    model = _load(target, device)
    cp.check_model(model)
    fmt = PromptFormat.from_dict(cp.target_format) if cp.target_format else get_format("direct")
    prompts = fmt.render_all(question, model.tokenizer)
    plain = generate(model, prompts, max_new_tokens=max_new_tokens)
    steered = generate(model, prompts, steering=cp.steering(alpha), max_new_tokens=max_new_tokens)
    for q, a, b in zip(question, plain, steered, strict=True):
        typer.echo(f"\n### {q}\n--- unsteered\n{a.text.strip()}\n--- steered ({_alpha_note(cp.alpha if alpha is None else alpha)})\n{b.text.strip()}")


@app.command()
def generate(
    target: Model,
    out: Annotated[Path, typer.Option(help="JSONL of completions")],
    pack: Annotated[Path | None, typer.Option(help="steer with this CapabilityPack")] = None,
    dataset: str = "svamp",
    split: str = "test",
    n: Annotated[int, typer.Option(help="first N problems of --dataset/--split")] = 20,
    alpha: AlphaOr = None,
    prompt_format: str = "direct",
    max_new_tokens: int = 256,
    batch_size: int = 16,
    device: str = "cpu",
) -> None:
    """Greedy completions on dataset questions, optionally steered; written as JSONL."""
    from unlock_lens.artifacts import atomic_write_bytes
    from unlock_lens.evaluate.datasets import load_dataset
    from unlock_lens.generation import generate as run_generate
    from unlock_lens.pack import CapabilityPack
    from unlock_lens.prompts import get_format

    _check_dataset(dataset)
    _check_positive(n, "--n")
    _check_alpha(alpha)
    _check_out_file(out)
    get_format(prompt_format)
    model = _load(target, device)
    steering = None
    if pack is not None:
        cp = CapabilityPack.load(pack)
        cp.check_model(model)
        steering = cp.steering(alpha)
    problems = load_dataset(dataset, split, limit=n)
    prompts = get_format(prompt_format).render_all([p.question for p in problems], model.tokenizer)
    gens = run_generate(model, prompts, steering=steering, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, progress=True)
    lines = [json.dumps({"id": p.id, "prompt": g.prompt, "output": g.text, "n_tokens": g.n_tokens})
             for p, g in zip(problems, gens, strict=True)]
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
    typer.echo(f"{len(gens)} completions -> {out}")


def _floats(text: str, what: str) -> list[float]:
    from unlock_lens.errors import UnlockLensError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UnlockLensError(f"--{what} must be comma-separated numbers, got {text!r}") from None


SUMMARY_COLUMNS = ["condition", "alpha", "seed", "n", "accuracy", "acc_lo", "acc_hi", "cot_rate",
                   "multi_step_rate", "degenerate_rate", "mean_tokens", "diff", "diff_lo", "diff_hi", "mcnemar_p"]


@app.command("eval")
def eval_(
    pack: Annotated[Path, typer.Option(help="CapabilityPack file")],
    target: Model,
    out: Annotated[Path, typer.Option(help="output folder (results.jsonl/.parquet/.meta.json, summary)")],
    dataset: str = "svamp",
    split: str = "test",
    data_path: Annotated[Path | None, typer.Option(help="JSONL file or data folder")] = None,
    conditions: Annotated[str, typer.Option(help="comma list of direct,cot-prompt,steered,native-key,random")] = "direct,cot-prompt,steered,random",
    alphas: Annotated[str | None, typer.Option(help="comma list (default: the pack's alpha)")] = None,
    seeds: Annotated[str, typer.Option(help="random-control seeds, comma list")] = "0,1,2",
    limit: Annotated[int | None, typer.Option(help="first N problems of the split")] = 200,
    n_key: Annotated[int, typer.Option(help="native-key questions (GSM8K-train key split)")] = 128,
    prompt_format: Annotated[str | None, typer.Option(help="locked format (default: the pack's)")] = None,
    max_new_tokens: int = 512,
    batch_size: int = 16,
    n_boot: int = 2000,
    seed: int = 0,
    device: str = "cpu",
    backend: Annotated[str, typer.Option(help="generation: auto (hf when possible), bridge (TransformerBridge loop), hf (HF generate over the same hooks: same tokens, faster on large vocabularies) or vllm (GPU; needs the vllm extra: pip install unlock-lens[vllm])")] = "auto",
    tensor_parallel_size: Annotated[int, typer.Option(help="vLLM: GPUs to shard the target over")] = 1,
    stop_loops: Annotated[bool, typer.Option(help="end outputs that repeat themselves (torch backends)")] = False,
) -> None:
    """Evaluate conditions on a dataset; write results and print the summary table."""
    from unlock_lens.artifacts import atomic_write_bytes
    from unlock_lens.evaluate.datasets import load_dataset
    from unlock_lens.evaluate.results import markdown_table
    from unlock_lens.evaluate.runner import Decoding, evaluate, parse_conditions
    from unlock_lens.pack import CapabilityPack

    if out.exists() and not out.is_dir():
        raise UnlockLensError(f"--out {out} is a file: eval writes a folder of results; give a folder path")
    conds = parse_conditions(conditions)
    alpha_list = _floats(alphas, "alphas") if alphas else None
    seed_list = [int(x) for x in _floats(seeds, "seeds")]
    problems = load_dataset(dataset, split, path=data_path, limit=limit)
    cp = CapabilityPack.load(pack)
    key_q = _questions("gsm8k", "train", "key", n_key, seed) if "native-key" in conds else None
    decoding = Decoding(max_new_tokens=max_new_tokens, batch_size=batch_size, engine=backend,
                        stop_loops=stop_loops)
    model = _load(target, device)
    with _vllm_generator(target, backend, tensor_parallel_size) as vllm:
        results = evaluate(
            model, problems, conditions=conds, pack=cp, alphas=alpha_list, seeds=seed_list,
            key_questions=key_q, locked_format=prompt_format, decoding=decoding, vllm=vllm,
            progress=True,
        )
    results.metadata.update(pack_path=str(pack), target_arg=target)
    paths = results.save(out)
    table = results.summary(n_boot=n_boot, seed=seed)[SUMMARY_COLUMNS]
    atomic_write_bytes(out / "summary.csv", table.to_csv(index=False).encode())
    atomic_write_bytes(out / "summary.md", markdown_table(table).encode())
    typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    typer.echo(f"rows -> {paths['jsonl']}; summary -> {out / 'summary.csv'}")


def _vllm_generator(target: str, backend: str, tensor_parallel_size: int) -> Any:
    """A VLLMSteeredGenerator over the target's local weights for ``--backend vllm``, else a no-op."""
    from contextlib import nullcontext

    if backend != "vllm":
        return nullcontext(None)
    from unlock_lens.backends.vllm import VLLMSteeredGenerator
    from unlock_lens.models import resolve_model_dir

    return VLLMSteeredGenerator(str(resolve_model_dir(target)), tensor_parallel_size=tensor_parallel_size)


@app.command()
def demo(
    source: Annotated[str | None, typer.Option(help="organism to take the key from (default chain-s)")] = None,
    target: Annotated[str | None, typer.Option(help="organism to steer (default chain-m)")] = None,
    n_test: Annotated[int, typer.Option(help="held-out test problems")] = 200,
    rank: Annotated[int | None, typer.Option(help="map rank (default 16, chosen on dev)")] = None,
    alpha: Annotated[float | None, typer.Option(help="steering strength (default 0.5, chosen on dev)")] = None,
    method: Annotated[str | None, typer.Option(help="alignment method (default svd)")] = None,
    n_random: Annotated[int, typer.Option(help="random-direction control seeds")] = 5,
    html: Annotated[Path | None, typer.Option(help="write an HTML report here")] = Path("out/demo.html"),
) -> None:
    """The whole pipeline on the shipped model organisms (30-50 s on a 2-core CPU).

    Extract a step-by-step key from one tiny trained model, align it into another with a
    trigger-free fit, steer, and score held-out problems against direct, trigger, native-key
    and random-direction controls (95% Wilson intervals).
    """
    import pandas as pd

    from unlock_lens.organisms import ORGANISMS, run_demo

    for flag, name in (("--source", source), ("--target", target)):
        if name is not None and name not in ORGANISMS:
            raise UnlockLensError(f"{flag} {name!r} is not an organism; choose one of {sorted(ORGANISMS)}")
    if method is not None:
        _check_method(method)
    if rank is not None:
        _check_positive(rank, "--rank")
    _check_alpha(alpha)
    _check_positive(n_test, "--n-test")

    table = run_demo(source, target, n_test=n_test, rank=rank, alpha=alpha, method=method,
                     n_random=n_random, html=html, verbose=False)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if html is not None:
        typer.echo(f"\nreport: {html}")


@app.command()
def run(
    source: Model = "smollm2-135m-instruct",
    target: Model = "gemma-3-270m",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("out/run"),
    n_key: Annotated[int, typer.Option(help="key questions (GSM8K train)")] = 64,
    n_align: Annotated[int, typer.Option(help="alignment questions, disjoint from the key's")] = 128,
    n_eval: Annotated[int, typer.Option(help="questions the distribution shift is measured on")] = 32,
    method: Method = "svd",
    rank: FitRank = None,
    data: Data = "tokens+last",
    max_pairs: MaxPairs = 4000,
    alphas: Annotated[str, typer.Option(help="comma list of steering strengths")] = "0.05,0.2",
    seed: int = 0,
    device: str = "cpu",
) -> None:
    """The main job: extract a CoT key, align it to the target, measure the steered target.

    Key, alignment and measurement questions are disjoint GSM8K-train splits. For each alpha
    it reports how far the target's next-token distribution under the direct prompt moves
    toward its own CoT-prompted distribution: unsteered, steered by the transferred key, by
    the target's native key (the ceiling), and by random controls (isotropic, and random
    source directions carried through the same maps). The defaults finish in a few minutes on
    a 2-core CPU (README); raise --n-key / --n-align / --n-eval for a larger run.
    """
    import time

    import pandas as pd

    from unlock_lens.artifacts import atomic_write_bytes
    from unlock_lens.diagnostics.distribution_shift import control_conditions, first_token_shift
    from unlock_lens.masterkey import extract_masterkey
    from unlock_lens.steer import Steering
    from unlock_lens.unlock import Unlock

    _fit_spec(None, method, rank, data, max_pairs, n_align, seed)
    _check_positive(n_key, "--n-key")
    _check_positive(n_eval, "--n-eval")
    alpha_list = _floats(alphas, "alphas")
    for a in alpha_list:
        _check_alpha(a, "--alphas")
    if out.exists() and not out.is_dir():
        raise UnlockLensError(f"--out {out} is a file: run writes a folder; give a folder path")
    t0 = time.perf_counter()

    def stage(text: str) -> None:
        typer.echo(f"[{time.perf_counter() - t0:6.0f} s] {text}", err=True)

    stage(f"1/5 loading {source} and {target}")
    src, tgt = _load(source, device), _load(target, device)
    pipe = Unlock(source=src, target=tgt, method=method, progress=True)
    spec = _fit_spec(pipe, method, rank, data, max_pairs, n_align, seed)
    key_q = _questions("gsm8k", "train", "key", n_key, seed)
    stage(f"2/5 extracting the key from {source} on {n_key} questions")
    key = pipe.extract(key_q)
    stage(f"3/5 aligning into {target} on {n_align} other questions ({method}, rank {spec.rank}, {data} data)")
    pack = pipe.align(key, _questions("gsm8k", "train", "align", n_align, seed), spec)
    out.mkdir(parents=True, exist_ok=True)
    key.save(out / "key.safetensors")
    pack.save(out / "pack.safetensors")
    target_locked = pipe.target_variant.format
    target_unlocked = get_format("cot").as_chat(target_locked.chat)
    stage(f"4/5 the target's own key (the ceiling) on the {n_key} key questions")
    native = extract_masterkey(pipe.target_variant, Variant(tgt, target_unlocked), key_q, progress=True)
    conditions: dict = {"direct": None}
    for a in alpha_list:
        conditions[f"native a={a}"] = Steering(native.directions, a)
        conditions.update(control_conditions(pack, a, seeds=(seed, seed + 1, seed + 2)))
    stage(f"5/5 first-token distributions: {len(conditions)} conditions x {n_eval} questions")
    rows = first_token_shift(tgt, _questions("gsm8k", "train", "dev", n_eval, seed),
                             target_locked, target_unlocked, conditions, progress=True)
    table = pd.DataFrame(rows)
    atomic_write_bytes(out / "first_token_shift.csv", table.to_csv(index=False).encode())
    stage("done")
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    typer.echo(f"\nkey, pack and table written to {out}/")


@app.command()
def reproduce(
    recipe: Annotated[str | None, typer.Argument(help="a recipe name (see --list) or a .toml file")] = None,
    list_: Annotated[bool, typer.Option("--list", help="name the shipped recipes and exit")] = False,
    out: Annotated[Path | None, typer.Option(help="output folder (default out/reproduce/RECIPE)")] = None,
    model: Annotated[list[str] | None, typer.Option(help="HUB_ID=LOCAL_DIR: use a local copy (repeatable)")] = None,
    dry_run: Annotated[bool, typer.Option(help="the whole path at the recipe's toy sizes (a check, not a result)")] = False,
    backend: Annotated[str, typer.Option(help="generation: auto (vLLM when installed and a GPU is present, else torch), torch or vllm")] = "auto",
    device: str = "cpu",
) -> None:
    """Reproduce a headline setting of the paper under the authors' protocol (a GPU and the
    model hub for the real sizes): the whole grid, both selections, beside the published table."""
    from unlock_lens.reproduce import load_recipe, parse_substitutes, recipe_names, run_recipe

    if list_:
        for name in recipe_names():
            typer.echo(f"{name:32s} {load_recipe(name).description}")
        return
    if recipe is None:
        raise UnlockLensError("name a recipe (unlock-lens reproduce --list shows them) or pass --list")
    loaded = load_recipe(recipe)
    substitutes = parse_substitutes(model or [])
    if backend not in ("auto", "torch", "vllm"):
        raise UnlockLensError(f"--backend {backend!r}: choose auto, torch or vllm")
    out = out or Path("out/reproduce") / loaded.name
    if out.exists() and not out.is_dir():
        raise UnlockLensError(f"--out {out} is a file: reproduce writes a folder; give a folder path")
    path = run_recipe(loaded, out, substitutes=substitutes, dry_run=dry_run, backend=backend,
                      load=lambda name: _load(name, device))
    typer.echo(path.read_text())
    typer.echo(f"table -> {path}")


@app.command()
def export(
    pack: Annotated[Path, typer.Option(help="CapabilityPack file")],
    format: Annotated[str, typer.Option("--format", help="gguf | vllm | safetensors")],
    out: Annotated[Path, typer.Option(help="file to write")],
    alpha: float | None = None,
    target: Annotated[str | None, typer.Option(help="target model: measure mean ||h|| for rotate/resid packs")] = None,
    norms: Annotated[Path | None, typer.Option(help="JSON {layer: mean ||h||}")] = None,
    dataset: str = "gsm8k",
    split: str = "train",
    n: int = 64,
    seed: int = 0,
    model_hint: str | None = None,
    prompt_length: int | None = None,
    strict: bool = False,
    device: str = "cpu",
) -> None:
    """Write the pack's transferred key for llama.cpp (gguf), TransformerLens-vLLM or other libraries."""
    from unlock_lens.export import export_pack

    if format not in ("gguf", "vllm", "safetensors"):
        raise UnlockLensError(f"--format {format!r} is unknown; choose gguf, vllm or safetensors")
    _check_out_file(out)
    _check_alpha(alpha)
    model = _load(target, device) if target else None
    prompts = _questions(dataset, split, "dev", n, seed) if target else None
    path = export_pack(pack, format, out, alpha=alpha, norms=norms, model=model, prompts=prompts,  # type: ignore[arg-type]
                       model_hint=model_hint, prompt_length=prompt_length, strict=strict)
    typer.echo(f"{format} export -> {path}")


def main(argv: Sequence[str] | None = None) -> None:
    """``unlock-lens``: a user error (:class:`UnlockLensError`) prints one line naming the problem
    and the fix and exits with code 2; anything else is a bug and keeps its traceback."""
    try:  # usage errors, --help and exit codes stay typer's own (standalone mode)
        app(args=list(argv) if argv is not None else None)
    except UnlockLensError as err:
        typer.secho("error: " + " ".join(str(err).split()), err=True, fg="red")
        sys.exit(2)


if __name__ == "__main__":
    main()
