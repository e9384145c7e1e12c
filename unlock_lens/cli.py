"""unlock-lens command line: demo | extract | align | steer | generate | eval | export | run | reproduce |
sweep | transfer-report.

Models are hub names, local HF directories, .gguf files or registry short names
(smollm2-135m-instruct, gemma-3-270m). Key and alignment questions come from disjoint
seeded splits of a dataset (--dataset gsm8k --split train) so they never overlap.
Every argument is checked before a model loads (unlock_lens/cli_checks.py).
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from unlock_lens import cli_checks as check
from unlock_lens.errors import UnlockLensError
from unlock_lens.evaluate.datasets import DATASETS
from unlock_lens.legends import TABLE_LEGENDS
from unlock_lens.prompts import get_format

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, rich_markup_mode=None)

#: modules that add commands to ``app`` with ``@app.command()`` (imported at the end of this file)
COMMAND_MODULES: tuple[str, ...] = ("unlock_lens.cli_transfer",)

_SPLITS = "; ".join(f"{name}: {check.choices(spec.files)}" for name, spec in DATASETS.items())
Model = Annotated[str, typer.Option(help="hub id, local HF dir, .gguf file or registry name "
                                         "(smollm2-135m-instruct, gemma-3-270m)")]
Dataset = Annotated[str, typer.Option(help=f"question set: {check.choices(DATASETS)}")]
Split = Annotated[str, typer.Option(help=f"split of --dataset ({_SPLITS})")]
Seed = Annotated[int, typer.Option(help="seed of the disjoint key / align / dev question splits")]
Device = Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:N or mps")]
BatchSize = Annotated[int, typer.Option(help="prompts per forward pass (lower it if memory runs out)")]
MaxNewTokens = Annotated[int, typer.Option(help="greedy tokens generated per answer, at most")]
FormatHelp = f"prompt format: {check.choices(check.format_names())}"
Method = Annotated[str, typer.Option(help="alignment method: svd (the authors'), procrustes, cca, ridge, identity")]
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
PackFile = Annotated[Path, typer.Option(help="CapabilityPack file (from `align`)")]


def _version(value: bool) -> None:
    if value:
        from unlock_lens.artifacts import library_version

        typer.echo(f"unlock-lens {library_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Extract, align and steer capability directions across language models."""


def _questions(dataset: str, split: str, role: str, n: int, seed: int) -> list[str]:
    from unlock_lens.evaluate.datasets import TRAIN_SPLIT_FRACTIONS, load_dataset, split_problems

    parts = split_problems(load_dataset(dataset, split), fractions=TRAIN_SPLIT_FRACTIONS, seed=seed)
    chosen = parts[role][:n]
    if len(chosen) < n:
        typer.secho(f"only {len(chosen)} {role} questions available (asked for {n})", fg="yellow")
    return [p.question for p in chosen]


def _fit_spec(pipe: Any, method: str, rank: int | None, data: str, max_pairs: int, n: int, seed: int) -> Any:
    """The AlignSpec of ``--data`` / ``--rank`` / ``--max-pairs``, checked before any model loads
    (``pipe=None``: check only). One pair per question for ``last``, so its rank is bounded by n."""
    from dataclasses import replace

    from unlock_lens.alignment_data import parse_data

    try:
        last_only = parse_data(data) == ("last",)
    except UnlockLensError as err:
        raise UnlockLensError(f"--data: {err}") from None
    check.check_positive(max_pairs, "--max-pairs")
    check.check_positive(rank, "--rank")  # 0 is an error, not "the default"
    rank = (16 if last_only else 256) if rank is None else rank
    if last_only:
        _check_fit(method, rank, n)
    else:
        check.check_method(method)
        check.check_positive(n, "--n")
    if pipe is None:
        return None
    return replace(pipe.spec, method=method, rank=rank, data=data,
                   max_pairs=None if last_only else max_pairs, data_seed=seed)


def _check_fit(method: str, rank: int, n: int) -> None:
    """A fit that would fail after loading and capturing fails here instead."""
    check.check_method(method)
    check.check_positive(rank, "--rank")
    check.check_positive(n, "--n")
    if rank > n:
        raise UnlockLensError(f"--rank {rank} is more than the {n} alignment questions (--n): a rank-k "
                              "fit needs at least k questions; lower --rank or raise --n")
    if rank == n:
        typer.secho(f"warning: --rank {rank} equals --n: the map interpolates its {n} questions "
                    "(train error 0); use a lower --rank or more questions", fg="yellow", err=True)


def _alpha_note(alpha: float) -> str:
    return f"alpha {alpha:g}" + (" (negative: steers away, removing the capability)" if alpha < 0 else "")


def _check_models(device: str, **flags: str | None) -> None:
    """``--device`` and each model flag (``source="..."`` checks ``--source``)."""
    check.check_device(device)
    for name, value in flags.items():
        if value is not None:
            check.check_model(value, "--" + name.replace("_", "-"))


def _say_conversion(name: str) -> None:
    """Say so when loading ``name`` will first dequantise a GGUF into the cache, and where."""
    from unlock_lens.models import conversion_target

    target = conversion_target(name)
    if target is not None:
        typer.echo(f"converting {name} (GGUF) into the cache, once: {target} "
                   "(about a minute; $UNLOCK_LENS_CACHE moves the cache)", err=True)


def _load(name: str, device: str):  # noqa: ANN202
    from unlock_lens.models import load_model

    _say_conversion(name)
    return load_model(name, device=device)


#: the columns `run` prints (every column of fidelity.csv is in its legend)
RUN_COLUMNS = ["alpha", "condition", "F", "F_lo", "F_hi", "rank", "p", "first_token_kl", "kl_rank", "kl_p"]


def _print_table(table: Any, legend: str) -> None:
    """A table as text, with its one-line legend under it."""
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_rows", 200, "display.max_columns", 20):
        typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    typer.echo(TABLE_LEGENDS[legend])


@app.command()
def extract(
    model: Model,
    out: Annotated[Path, typer.Option(help="where to write the MasterKey (.safetensors)")],
    unlocked_model: Annotated[str | None, typer.Option(help="post-trained model: a model-driven key")] = None,
    dataset: Dataset = "gsm8k",
    split: Split = "train",
    n: Annotated[int, typer.Option(help="key questions (the key split of --dataset/--split)")] = 256,
    locked_format: Annotated[str | None, typer.Option(help=f"capability-absent {FormatHelp} (default: direct, chat if the model has a template)")] = None,
    unlocked_format: Annotated[str | None, typer.Option(help=f"capability-present {FormatHelp} (default: cot)")] = None,
    aggregator: Annotated[str, typer.Option(help="mean of differences (the paper's) or pca")] = "mean",
    capability: Annotated[str, typer.Option(help="a name recorded in the key")] = "cot",
    batch_size: BatchSize = 16,
    seed: Seed = 0,
    device: Device = "cpu",
) -> None:
    """Extract a MasterKey from a source (prompt- or model-driven contrast)."""
    from unlock_lens.unlock import Unlock

    check.check_dataset(dataset, split)
    check.check_positive(n, "--n")
    check.check_format(locked_format, "--locked-format")
    check.check_format(unlocked_format, "--unlocked-format")
    check.check_choice(aggregator, check.AGGREGATORS, "--aggregator")
    check.check_positive(batch_size, "--batch-size")
    check.check_out_file(out)
    _check_models(device, model=model, unlocked_model=unlocked_model)
    questions = _questions(dataset, split, "key", n, seed)
    src = _load(model, device)
    pipe = Unlock(
        source=src, target=src, source_unlocked=_load(unlocked_model, device) if unlocked_model else None,
        locked_format=locked_format, unlocked_format=unlocked_format, aggregator=aggregator,  # type: ignore[arg-type]
        batch_size=batch_size, progress=True,
    )
    key = pipe.extract(questions, capability=capability)
    key.save(out)
    typer.echo(f"MasterKey: {len(key.layers)} layers x d={key.directions.shape[1]}, "
               f"n={key.n_prompts}, {key.contrast}-driven, {key.aggregator} -> {out}")


@app.command()
def align(
    key: Annotated[Path, typer.Option(help="MasterKey file from `extract`")],
    source: Model,
    target: Model,
    out: Annotated[Path, typer.Option(help="where to write the CapabilityPack")],
    dataset: Dataset = "gsm8k",
    split: Split = "train",
    n: Annotated[int, typer.Option(help="alignment questions (the align split, disjoint from the key's)")] = 256,
    method: Method = "svd",
    rank: FitRank = None,
    data: Data = "tokens+last",
    max_pairs: MaxPairs = 4000,
    alpha: Alpha = 0.1,
    normalisation: Normalisation = "rotate",
    positions: Positions = "last_prompt",
    target_format: Annotated[str | None, typer.Option(help=f"the target's {FormatHelp} (default: the protocol's for the target)")] = None,
    batch_size: BatchSize = 16,
    seed: Seed = 0,
    device: Device = "cpu",
) -> None:
    """Map a MasterKey into a target model; write a CapabilityPack."""
    from unlock_lens.masterkey import MasterKey
    from unlock_lens.prompts import PromptFormat
    from unlock_lens.unlock import Unlock

    check.check_dataset(dataset, split)
    _fit_spec(None, method, rank, data, max_pairs, n, seed)
    check.check_steering(normalisation, positions)
    check.check_alpha(alpha)
    check.check_format(target_format, "--target-format")
    check.check_positive(batch_size, "--batch-size")
    check.check_out_file(out)
    check.check_in_file(key, "--key")
    _check_models(device, source=source, target=target)
    mk = MasterKey.load(key)
    align_q, dev_q = (_questions(dataset, split, role, size, seed) for role, size in (("align", n), ("dev", 32)))
    fmt = PromptFormat.from_dict(mk.unlocked_format if mk.contrast == "model" else mk.locked_format)  # type: ignore[arg-type]
    pipe = Unlock(
        source=_load(source, device), target=_load(target, device),
        locked_format=fmt, unlocked_format=fmt, target_format=target_format, method=method,
        alpha=alpha, normalisation=normalisation, positions=positions,  # type: ignore[arg-type]
        batch_size=batch_size, progress=True,
    )
    spec = _fit_spec(pipe, method, rank, data, max_pairs, n, seed)
    pack = pipe.align(mk, align_q, spec)
    pack.save(out)
    errs = [m.metrics.get("train_relative_error", float("nan")) for m in pack.maps.values()]
    held_out = _held_out_error(pipe, pack, dev_q)
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
    pack: PackFile,
    target: Model,
    question: Annotated[list[str], typer.Option(help="a question (repeatable)")],
    alpha: AlphaOr = None,
    max_new_tokens: MaxNewTokens = 128,
    device: Device = "cpu",
) -> None:
    """Print unsteered and steered greedy completions side by side."""
    from unlock_lens.generation import generate
    from unlock_lens.pack import CapabilityPack
    from unlock_lens.prompts import PromptFormat, get_format

    if not question or any(not q.strip() for q in question):
        raise UnlockLensError("--question is empty: give the question text, e.g. --question 'What is 17 * 3?'")
    check.check_alpha(alpha)
    check.check_positive(max_new_tokens, "--max-new-tokens")
    check.check_in_file(pack, "--pack")
    _check_models(device, target=target)
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
    dataset: Dataset = "svamp",
    split: Split = "test",
    n: Annotated[int, typer.Option(help="first N problems of --dataset/--split")] = 20,
    alpha: AlphaOr = None,
    prompt_format: Annotated[str, typer.Option(help=FormatHelp)] = "direct",
    max_new_tokens: MaxNewTokens = 256,
    batch_size: BatchSize = 16,
    device: Device = "cpu",
) -> None:
    """Greedy completions on dataset questions, optionally steered; written as JSONL."""
    from unlock_lens.artifacts import atomic_write_bytes
    from unlock_lens.evaluate.datasets import load_dataset
    from unlock_lens.generation import generate as run_generate
    from unlock_lens.pack import CapabilityPack

    check.check_dataset(dataset, split)
    check.check_positive(n, "--n")
    check.check_alpha(alpha)
    check.check_format(prompt_format, "--prompt-format")
    check.check_positive(max_new_tokens, "--max-new-tokens")
    check.check_positive(batch_size, "--batch-size")
    check.check_out_file(out)
    check.check_in_file(pack, "--pack")
    _check_models(device, target=target)
    cp = CapabilityPack.load(pack) if pack is not None else None
    problems = load_dataset(dataset, split, limit=n)
    model = _load(target, device)
    steering = None
    if cp is not None:
        cp.check_model(model)
        steering = cp.steering(alpha)
    prompts = get_format(prompt_format).render_all([p.question for p in problems], model.tokenizer)
    gens = run_generate(model, prompts, steering=steering, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, progress=True)
    lines = [json.dumps({"id": p.id, "prompt": g.prompt, "output": g.text, "n_tokens": g.n_tokens})
             for p, g in zip(problems, gens, strict=True)]
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
    typer.echo(f"{len(gens)} completions -> {out}")


SUMMARY_COLUMNS = ["condition", "alpha", "seed", "n", "accuracy", "acc_lo", "acc_hi", "cot_rate",
                   "multi_step_rate", "degenerate_rate", "mean_tokens", "diff", "diff_lo", "diff_hi", "mcnemar_p"]
BACKENDS = ("auto", "bridge", "hf", "vllm")


@app.command("eval")
def eval_(
    pack: PackFile,
    target: Model,
    out: Annotated[Path, typer.Option(help="output folder (results.jsonl/.parquet/.meta.json, summary)")],
    dataset: Dataset = "svamp",
    split: Split = "test",
    data_path: Annotated[Path | None, typer.Option(help="JSONL file or data folder")] = None,
    conditions: Annotated[str, typer.Option(help="comma list of direct,cot-prompt,steered,native-key,random")] = "direct,cot-prompt,steered,random",
    alphas: Annotated[str | None, typer.Option(help="comma list (default: the pack's alpha)")] = None,
    seeds: Annotated[str, typer.Option(help="random-control seeds, comma list")] = "0,1,2",
    limit: Annotated[int | None, typer.Option(help="first N problems of the split")] = 200,
    n_key: Annotated[int, typer.Option(help="native-key questions (GSM8K-train key split)")] = 128,
    prompt_format: Annotated[str | None, typer.Option(help=f"locked {FormatHelp} (default: the pack's)")] = None,
    max_new_tokens: MaxNewTokens = 512,
    batch_size: BatchSize = 16,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples of the paired difference's interval")] = 2000,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap and of the native key's question split")] = 0,
    device: Device = "cpu",
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

    check.check_out_folder(out, "eval")
    try:
        conds = parse_conditions(conditions)
    except UnlockLensError as err:
        raise UnlockLensError(f"--conditions: {err}") from None
    alpha_list = check.parse_alphas(alphas) if alphas is not None else None
    seed_list = check.parse_seeds(seeds)
    check.check_dataset(dataset, split)
    check.check_positive(limit, "--limit")
    check.check_positive(n_key, "--n-key")
    check.check_format(prompt_format, "--prompt-format")
    check.check_positive(max_new_tokens, "--max-new-tokens")
    check.check_positive(batch_size, "--batch-size")
    check.check_positive(n_boot, "--n-boot")
    check.check_choice(backend, BACKENDS, "--backend")
    check.check_positive(tensor_parallel_size, "--tensor-parallel-size")
    if backend == "vllm" and stop_loops:
        raise UnlockLensError("--stop-loops works on the torch backends only: drop it or use --backend hf")
    check.check_in_file(pack, "--pack")
    if data_path is not None and not data_path.exists():
        raise UnlockLensError(f"--data-path {data_path} does not exist: give a JSONL file or a data folder")
    _check_models(device, target=target)
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
    _print_table(table, "eval")
    typer.echo(f"rows -> {paths['jsonl']}; summary -> {out / 'summary.csv'}")


def _vllm_generator(target: str, backend: str, tensor_parallel_size: int) -> Any:
    """A VLLMSteeredGenerator over the target's local weights for ``--backend vllm``, else a no-op."""
    from contextlib import nullcontext

    if backend != "vllm":
        return nullcontext(None)
    from unlock_lens.backends.vllm import VLLMSteeredGenerator
    from unlock_lens.models import resolve_model_dir

    _say_conversion(target)
    return VLLMSteeredGenerator(str(resolve_model_dir(target)), tensor_parallel_size=tensor_parallel_size)


@app.command()
def demo(
    source: Annotated[str | None, typer.Option(help="organism to take the key from (default chain-s)")] = None,
    target: Annotated[str | None, typer.Option(help="organism to steer (default chain-m)")] = None,
    n_test: Annotated[int, typer.Option(help="held-out test problems")] = 200,
    rank: Annotated[int | None, typer.Option(help="map rank (default 16, chosen on dev)")] = None,
    alpha: Annotated[float | None, typer.Option(help="steering strength (default 0.5, chosen on dev)")] = None,
    method: Annotated[str | None, typer.Option(help="alignment method: svd (default), procrustes, cca, ridge, identity")] = None,
    n_random: Annotated[int, typer.Option(help="random-mapped null directions (the key is ranked among them)")] = 10,
    html: Annotated[Path | None, typer.Option(help="write an HTML report here")] = Path("out/demo.html"),
) -> None:
    """The whole pipeline on the shipped model organisms (30-50 s on a 2-core CPU).

    Extract a step-by-step key from one tiny trained model, align it into another with a
    trigger-free fit, steer, and score held-out problems against direct, trigger, native-key
    and random-mapped null directions (95% Wilson intervals; the key's rank among the nulls).
    """
    from unlock_lens.organisms import ORGANISMS, run_demo

    for flag, name in (("--source", source), ("--target", target)):
        if name is not None and name not in ORGANISMS:
            raise UnlockLensError(f"{flag} {name!r} is not an organism; choose {check.choices(sorted(ORGANISMS))}")
    if method is not None:
        check.check_method(method)
    check.check_positive(rank, "--rank")
    check.check_alpha(alpha)
    check.check_positive(n_test, "--n-test")
    check.check_positive(n_random, "--n-random")
    if html is not None:
        check.check_out_file(html, "--html")

    table = run_demo(source, target, n_test=n_test, rank=rank, alpha=alpha, method=method,
                     n_random=n_random, html=html, verbose=False)
    _print_table(table, "demo")
    if html is not None:
        typer.echo(f"\nreport: {html}")


@app.command()
def run(
    source: Model = "smollm2-135m-instruct",
    target: Model = "gemma-3-270m",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("out/run"),
    n_key: Annotated[int, typer.Option(help="key questions (GSM8K train)")] = 64,
    n_align: Annotated[int, typer.Option(help="alignment questions, disjoint from the key's")] = 128,
    n_eval: Annotated[int, typer.Option(help="questions the fidelity and first-token shift are measured on (GSM8K train, disjoint)")] = 32,
    method: Method = "svd",
    rank: FitRank = None,
    data: Data = "tokens+last",
    max_pairs: MaxPairs = 4000,
    alphas: Annotated[str, typer.Option(help="comma list of steering strengths")] = "0.05,0.2",
    n_nulls: Annotated[int, typer.Option(help="random-mapped null directions per alpha (>= 30 for a p below 0.05 to mean much)")] = 30,
    tokens: Annotated[int, typer.Option(help="length of the native key's reference continuations (raw greedy tokens)")] = 16,
    seed: Seed = 0,
    device: Device = "cpu",
) -> None:
    """The main job: extract a CoT key, align it to the target, and test whether it carries the
    target's own CoT behaviour, against random-mapped null directions.

    Key, alignment and measurement questions are disjoint GSM8K-train splits. For each alpha,
    on the measurement questions under the direct prompt: the target's greedy continuations
    under its own key are the reference behaviour; the transferred key, its negation and
    --n-nulls random-mapped directions (random source directions through the same maps) are
    scored by the likelihood fidelity F of that behaviour and by the first-token KL to the
    target's CoT-prompted distribution, each ranked among the null directions (the direction
    is the unit of the test). It prints the rows that matter and one verdict per alpha, and
    writes the key, the pack, the full table and the verdicts to --out. The defaults finish in
    under 10 minutes on an idle 2-core CPU (README).
    """
    import time

    from unlock_lens.activations import Variant
    from unlock_lens.artifacts import atomic_write_bytes
    from unlock_lens.diagnostics.fidelity import fidelity_by_alpha
    from unlock_lens.masterkey import extract_masterkey
    from unlock_lens.unlock import Unlock

    _fit_spec(None, method, rank, data, max_pairs, n_align, seed)
    check.check_positive(n_key, "--n-key")
    check.check_positive(n_eval, "--n-eval")
    check.check_positive(n_nulls, "--n-nulls")
    check.check_positive(tokens, "--tokens")
    alpha_list = check.parse_alphas(alphas)
    check.check_out_folder(out, "run")
    _check_models(device, source=source, target=target)
    key_q = _questions("gsm8k", "train", "key", n_key, seed)
    align_q = _questions("gsm8k", "train", "align", n_align, seed)
    eval_q = _questions("gsm8k", "train", "dev", n_eval, seed)
    t0 = time.perf_counter()

    def stage(text: str) -> None:
        typer.echo(f"[{time.perf_counter() - t0:6.0f} s] {text}", err=True)

    stage(f"1/5 loading {source} and {target}")
    src, tgt = _load(source, device), _load(target, device)
    pipe = Unlock(source=src, target=tgt, method=method, progress=True)
    spec = _fit_spec(pipe, method, rank, data, max_pairs, n_align, seed)
    stage(f"2/5 extracting the key from {source} on {n_key} questions")
    key = pipe.extract(key_q)
    stage(f"3/5 aligning into {target} on {n_align} other questions ({method}, rank {spec.rank}, {data} data)")
    pack = pipe.align(key, align_q, spec)
    out.mkdir(parents=True, exist_ok=True)
    key.save(out / "key.safetensors")
    pack.save(out / "pack.safetensors")
    target_locked = pipe.target_variant.format
    target_unlocked = get_format("cot").as_chat(target_locked.chat)
    stage(f"4/5 the target's own key (the ceiling) on the {n_key} key questions")
    native = extract_masterkey(pipe.target_variant, Variant(tgt, target_unlocked), key_q, progress=True)
    stage(f"5/5 fidelity: {3 + n_nulls} directions x {len(alpha_list)} alphas x {n_eval} questions, "
          f"{tokens}-token references")
    table, verdicts = fidelity_by_alpha(
        tgt, pack, native.directions, target_locked.render_all(eval_q, tgt.tokenizer),
        target_unlocked.render_all(eval_q, tgt.tokenizer), alpha_list, n_nulls=n_nulls, seed=seed,
        max_new_tokens=tokens)  # raw greedy tokens: a stop string can cut a steered output to nothing
    atomic_write_bytes(out / "fidelity.csv", table.to_csv(index=False).encode())
    atomic_write_bytes(out / "verdict.txt", ("\n".join(verdicts) + "\n").encode())
    stage("done")
    _print_table(table[~table.condition.str.startswith("random-mapped ")][RUN_COLUMNS], "run")
    typer.echo("")
    for line in verdicts:
        typer.echo(line)
    typer.echo(f"\nkey, pack, full table (fidelity.csv) and verdicts written to {out}/")


@app.command()
def reproduce(
    recipe: Annotated[str | None, typer.Argument(help="a recipe name (see --list) or a .toml file")] = None,
    list_: Annotated[bool, typer.Option("--list", help="name the shipped recipes and exit")] = False,
    out: Annotated[Path | None, typer.Option(help="output folder (default out/reproduce/RECIPE)")] = None,
    model: Annotated[list[str] | None, typer.Option(help="HUB_ID=LOCAL_DIR: use a local copy (repeatable)")] = None,
    dry_run: Annotated[bool, typer.Option(help="the whole path at the recipe's toy sizes (a check, not a result)")] = False,
    backend: Annotated[str, typer.Option(help="generation: auto (vLLM when installed and a GPU is present, else torch), torch or vllm")] = "auto",
    device: Device = "cpu",
) -> None:
    """Reproduce a headline setting of the paper under the authors' protocol (a GPU and the
    model hub for the real sizes): the whole grid, both selections, beside the published table."""
    from unlock_lens.models import check_model_source
    from unlock_lens.reproduce import load_recipe, parse_substitutes, recipe_names, run_recipe

    if list_:
        for name in recipe_names():
            typer.echo(f"{name:32s} {load_recipe(name).description}")
        return
    if recipe is None:
        raise UnlockLensError("name a recipe (unlock-lens reproduce --list shows them) or pass --list")
    loaded = load_recipe(recipe)
    substitutes = parse_substitutes(model or [])
    check.check_choice(backend, ("auto", "torch", "vllm"), "--backend")
    out = out or Path("out/reproduce") / loaded.name
    check.check_out_folder(out, "reproduce")
    check.check_device(device)
    for role, hub_id in loaded.sized(dry_run).models.items():
        try:
            check_model_source(substitutes.get(hub_id, hub_id))
        except UnlockLensError as err:
            raise UnlockLensError(f"--model: the recipe's {role} model {hub_id}: {err}; or pass "
                                  f"--model {hub_id}=LOCAL_DIR") from None
    path = run_recipe(loaded, out, substitutes=substitutes, dry_run=dry_run, backend=backend,
                      load=lambda name: _load(name, device))
    typer.echo(path.read_text())
    typer.echo(f"table -> {path}")


@app.command()
def export(
    pack: PackFile,
    format: Annotated[str, typer.Option("--format", help="gguf (llama.cpp control vector), vllm (TransformerLens-vLLM specs) or safetensors (steering-vectors / repeng)")],
    out: Annotated[Path, typer.Option(help="file to write")],
    alpha: AlphaOr = None,
    target: Annotated[str | None, typer.Option(help="target model: measure mean ||h|| for rotate/resid packs")] = None,
    norms: Annotated[Path | None, typer.Option(help="JSON {layer: mean ||h||} (instead of --target)")] = None,
    dataset: Annotated[str, typer.Option(help=f"questions --target's norms are measured on: {check.choices(DATASETS)}")] = "gsm8k",
    split: Split = "train",
    n: Annotated[int, typer.Option(help="questions --target's norms are measured on (the dev split)")] = 64,
    seed: Seed = 0,
    model_hint: Annotated[str | None, typer.Option(help="gguf: the model hint recorded in the file (default: the target's model id; llama.cpp does not read it)")] = None,
    prompt_length: Annotated[int | None, typer.Option(help="vllm: the single prompt's token count, needed by last_prompt / prompt packs")] = None,
    strict: Annotated[bool, typer.Option(help="gguf: refuse, rather than drop with a warning, layers llama.cpp cannot steer")] = False,
    device: Device = "cpu",
) -> None:
    """Write the pack's transferred key for llama.cpp (gguf), TransformerLens-vLLM or other libraries."""
    from unlock_lens.export import export_pack

    check.check_choice(format, ("gguf", "vllm", "safetensors"), "--format")
    check.check_out_file(out)
    check.check_alpha(alpha)
    check.check_in_file(pack, "--pack")
    check.check_in_file(norms, "--norms")
    check.check_positive(prompt_length, "--prompt-length")
    if target is not None:
        check.check_dataset(dataset, split)
        check.check_positive(n, "--n")
        _check_models(device, target=target)
    prompts = _questions(dataset, split, "dev", n, seed) if target else None
    model = _load(target, device) if target else None
    path = export_pack(pack, format, out, alpha=alpha, norms=norms, model=model, prompts=prompts,  # type: ignore[arg-type]
                       model_hint=model_hint, prompt_length=prompt_length, strict=strict)
    typer.echo(f"{format} export -> {path}")


from unlock_lens.sweep.run import register as _register_sweep  # noqa: E402

_register_sweep(app)


def main(argv: Sequence[str] | None = None) -> None:
    """``unlock-lens``: a user error (:class:`UnlockLensError`) prints one line naming the problem
    and the fix and exits with code 2; anything else is a bug and keeps its traceback."""
    try:  # usage errors, --help and exit codes stay typer's own (standalone mode)
        app(args=list(argv) if argv is not None else None)
    except UnlockLensError as err:
        typer.secho("error: " + " ".join(str(err).split()), err=True, fg="red")
        sys.exit(2)


for _module in COMMAND_MODULES:
    importlib.import_module(_module)

if __name__ == "__main__":
    main()
