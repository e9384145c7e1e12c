"""Reproduction recipes: the paper's headline settings as small config files, run end to end.

    unlock-lens reproduce --list
    unlock-lens reproduce qwen1.5-14b-to-7b-cot --out out/repro         # GPU + hub
    unlock-lens reproduce qwen1.5-14b-to-7b-cot --dry-run --model Qwen/Qwen1.5-14B=/tiny/a ...

A recipe (``unlock_lens/recipes/*.toml``) names the models, the question pool, the test sets,
the grid (n, k, alpha, aggregator) and the decoding, and carries the published numbers
(METHOD.md §5). A run, under the recipe's protocol (``paper``):

1. captures the pool's questions once through every model (the key and alignment questions of
   each n are slices of one capture);
2. builds a key and maps for every grid point (:func:`key_from_captures`, :func:`fit_layer_maps`);
3. scores every grid point on the dev problems (the first of the pool: disjoint from the key's
   last-n questions) and on every test set;
4. writes the table beside the published numbers with both selections: **dev-selected** (the
   grid point best on dev, then tested) and **best of grid on test** (the maximum test accuracy
   over all grid points: the authors' figures' selection, an optimistic upper bound).

Generation runs on vLLM when it is installed and a GPU is present, else on torch.
"""

from __future__ import annotations

import itertools
import json
import tomllib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from unlock_lens.activations import Variant, capture, check_layers
from unlock_lens.align.layers import LayerPairing, fit_layer_maps, map_directions
from unlock_lens.artifacts import atomic_write_bytes
from unlock_lens.errors import UnlockLensError
from unlock_lens.evaluate.datasets import DATASETS, Problem, load_dataset, remove_overlap
from unlock_lens.evaluate.runner import run_condition
from unlock_lens.masterkey import key_from_captures
from unlock_lens.protocol import get_protocol
from unlock_lens.steer import Steering
from unlock_lens.unlock import Unlock

GRID_KEYS = ("n", "rank", "alpha", "aggregator")


@dataclass(frozen=True)
class Recipe:
    """One reproduction setting (a parsed recipe file)."""

    name: str
    description: str
    protocol: str
    models: Mapping[str, str]
    pool: str
    dev: int
    sets: tuple[str, ...]
    test_limit: int
    grid: Mapping[str, tuple]
    max_new_tokens: int
    published: Mapping[str, Mapping[str, float]]
    dry_run: Mapping[str, Any] = field(default_factory=dict)

    @property
    def contrast(self) -> str:
        return "model" if "source_unlocked" in self.models else "prompt"

    @classmethod
    def from_toml(cls, text: str, origin: str = "<recipe>") -> Recipe:
        try:
            d = tomllib.loads(text)
            grid = {k: tuple(d["grid"][k]) for k in GRID_KEYS}
            recipe = cls(
                name=d["name"], description=d["description"], protocol=d.get("protocol", "paper"),
                models=dict(d["models"]), pool=d["data"]["pool"], dev=int(d["data"]["dev"]),
                sets=tuple(d["data"]["sets"]), test_limit=int(d["data"].get("test_limit", 0)),
                grid=grid, max_new_tokens=int(d["decoding"]["max_new_tokens"]),
                published={k: dict(v) for k, v in d.get("published", {}).items()},
                dry_run=dict(d.get("dry_run", {})),
            )
        except (KeyError, TypeError, ValueError, tomllib.TOMLDecodeError) as err:
            raise UnlockLensError(f"recipe {origin} is malformed ({type(err).__name__}: {err}): "
                                  "compare it with the shipped recipes (unlock-lens reproduce --list)") from None
        recipe.check()
        return recipe

    def check(self) -> None:
        for role in ("source", "target"):
            if role not in self.models:
                raise UnlockLensError(f"recipe {self.name!r} names no {role} model under [models]")
        for name in (self.pool.split(":")[0], *self.sets):
            if name not in DATASETS:
                raise UnlockLensError(f"recipe {self.name!r}: unknown dataset {name!r}; known: {sorted(DATASETS)}")
        get_protocol(self.protocol)

    def sized(self, dry_run: bool) -> Recipe:
        """The recipe itself, or its ``[dry_run]`` sizes: a toy grid, a few problems, few tokens."""
        if not dry_run:
            return self
        if not self.dry_run:
            raise UnlockLensError(f"recipe {self.name!r} has no [dry_run] section")
        dr = self.dry_run
        return replace(self, dev=int(dr["problems"]), test_limit=int(dr["problems"]),
                       grid={k: tuple(dr.get(k, self.grid[k][:1])) for k in GRID_KEYS},
                       max_new_tokens=int(dr["max_new_tokens"]), dry_run={})


def recipe_names() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in resources.files("unlock_lens.recipes").iterdir()
                  if p.name.endswith(".toml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name, or a recipe file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        return Recipe.from_toml(path.read_text(), str(path))
    if str(name_or_path) not in recipe_names():
        raise UnlockLensError(f"unknown recipe {str(name_or_path)!r}; shipped: {recipe_names()} "
                              "(or pass a .toml file)")
    text = resources.files("unlock_lens.recipes").joinpath(f"{name_or_path}.toml").read_text()
    return Recipe.from_toml(text, str(name_or_path))


def parse_substitutes(items: Sequence[str]) -> dict[str, str]:
    """``["hub/id=/local/dir", ...]`` -> {hub id: replacement}."""
    out = {}
    for item in items:
        hub_id, sep, local = item.partition("=")
        if not sep or not hub_id or not local:
            raise UnlockLensError(f"--model {item!r}: write HUB_ID=LOCAL_DIR, e.g. Qwen/Qwen1.5-7B=/models/q7")
        out[hub_id] = local
    return out


# ---- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridPoint:
    n: int
    rank: int
    alpha: float
    aggregator: str

    @property
    def label(self) -> str:
        return f"n={self.n} k={self.rank} a={self.alpha:g} {self.aggregator}"


def grid_points(grid: Mapping[str, Sequence]) -> list[GridPoint]:
    return [GridPoint(int(n), int(k), float(a), str(g))
            for n, k, a, g in itertools.product(*(grid[k] for k in GRID_KEYS))]


def _pool(recipe: Recipe) -> list[Problem]:
    name, _, split = recipe.pool.partition(":")
    return load_dataset(name, split or "train")


def _backend(target_id: str, backend: str) -> Any:
    """A vLLM generator over the target when asked (or when ``auto`` finds vLLM and a GPU)."""
    from contextlib import nullcontext

    if backend == "torch":
        return nullcontext(None)
    if backend not in ("auto", "vllm"):
        raise UnlockLensError(f"--backend {backend!r}: choose auto, torch or vllm")
    try:
        import vllm  # noqa: F401
    except ImportError:
        if backend == "vllm":
            raise UnlockLensError("--backend vllm needs vLLM: pip install 'unlock-lens[vllm]'") from None
        return nullcontext(None)
    if backend == "auto" and not torch.cuda.is_available():
        return nullcontext(None)
    from unlock_lens.backends.vllm import VLLMSteeredGenerator
    from unlock_lens.models import resolve_model_dir

    return VLLMSteeredGenerator(str(resolve_model_dir(target_id)))


class _Scorer:
    """Accuracy of one condition on one problem list, with every output kept."""

    def __init__(self, model: Any, variant: Variant, decoding: Any, vllm: Any) -> None:
        self.model, self.variant, self.decoding, self.vllm = model, variant, decoding, vllm
        self.rows: list[dict[str, Any]] = []

    def __call__(self, problems: Sequence[Problem], condition: str, split: str,
                 steering: Steering | None = None, point: GridPoint | None = None,
                 variant: Variant | None = None) -> float:
        variant = variant or self.variant
        rows = run_condition(variant.model, problems, variant.prompts([p.question for p in problems]),
                             condition=condition, steering=steering,
                             alpha=point.alpha if point else None, decoding=self.decoding,
                             vllm=self.vllm if variant.model is self.model else None,
                             special_tokens=variant.special_tokens)
        extra = {"split": split, **({k: getattr(point, k) for k in GRID_KEYS} if point else {})}
        self.rows += [{**r, **extra} for r in rows]
        return 100.0 * sum(r["correct"] for r in rows) / len(rows)


def grid_steerings(pipe: Unlock, points: Sequence[GridPoint], questions: Sequence[str]
                   ) -> dict[GridPoint, Steering]:
    """A Steering per grid point under ``pipe``'s protocol, from one capture of ``questions``
    through each side: grid point (n, k, ...) uses the last n questions for its key and its
    alignment (the authors' shared sets), so every key and map is a slice of the same capture.
    Equal to ``pipe.align(pipe.extract(q[-n:]), q[-n:])`` with rank k (tested)."""
    protocol = pipe.protocol
    n_max = len(questions)
    if max(p.n for p in points) > n_max:
        raise UnlockLensError(f"a grid point needs n={max(p.n for p in points)} questions; {n_max} given")
    if pipe.spec.data != "last":
        raise UnlockLensError(f"grid_steerings fits on last-token captures; protocol {protocol.name!r} "
                              f"aligns on {pipe.spec.data!r} data")
    src_layers, tgt_layers = check_layers(pipe.source, None), check_layers(pipe.target, None)
    pairing = LayerPairing.by_depth(len(src_layers), len(tgt_layers))
    fl = protocol.final_layer

    def side(variant: Variant, layers: list[int], what: str) -> torch.Tensor:
        return capture(variant.model, variant.prompts(questions), layers, final_layer=fl,
                       special_tokens=variant.special_tokens, tokenizer_of=variant.tokenizer_of,
                       progress=f"capture {what}")

    h_locked = side(pipe.locked, src_layers, "source (locked)")
    key_locked = pipe.key_locked  # the key may read the locked side with another tokenizer
    h_key_locked = h_locked if key_locked.tokenizer_of is None else side(key_locked, src_layers, "source (key)")
    h_unlocked = side(pipe.unlocked, src_layers, "source (unlocked)")
    h_target = side(pipe.target_variant, tgt_layers, "target")
    steerings: dict[GridPoint, Steering] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="rank .* clamped")  # run.json lists the clamped points
        for p in points:
            rows = slice(n_max - p.n, n_max)
            key = key_from_captures(h_key_locked[rows], h_unlocked[rows], key_locked, pipe.unlocked,
                                    questions[rows], layers=src_layers, aggregator=p.aggregator,
                                    final_layer=fl)
            spec = replace(pipe.spec, method="svd", rank=p.rank, clamp_rank=True).for_key(key)
            maps = fit_layer_maps(h_locked[rows][:, pairing.source_layers], h_target[rows], pairing, spec)
            steerings[p] = Steering(map_directions(key, maps), alpha=p.alpha,
                                    normalisation=protocol.normalisation, positions=protocol.positions,
                                    edit_dtype=protocol.edit_dtype)
    return steerings


def run_recipe(
    recipe: Recipe,
    out: str | Path,
    *,
    substitutes: Mapping[str, str] | None = None,
    dry_run: bool = False,
    backend: str = "auto",
    load: Any = None,
) -> Path:
    """Run ``recipe`` (``dry_run``: its toy sizes) and write ``out/table.md``, ``grid.csv``,
    ``outputs.jsonl`` and ``run.json``; returns the table's path. ``substitutes`` maps a hub id
    to a local directory (the tests put tiny random models of the same architectures there)."""
    from unlock_lens.models import load_model

    load = load or load_model
    substitutes = dict(substitutes or {})
    sized = recipe.sized(dry_run)
    protocol = get_protocol(sized.protocol)
    if not protocol.shared_questions:
        raise UnlockLensError(f"recipes run the authors' shared key/alignment questions; protocol "
                              f"{protocol.name!r} does not share them")
    ids = {role: substitutes.get(mid, mid) for role, mid in sized.models.items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    points = grid_points(sized.grid)
    pool = _pool(sized)
    n_max = max(p.n for p in points)
    if len(pool) < sized.dev + n_max:
        raise UnlockLensError(f"pool {sized.pool} has {len(pool)} problems; the recipe needs {sized.dev} "
                              f"dev + {n_max} key questions")
    dev = pool[: sized.dev]
    tests = {name: remove_overlap(load_dataset(name, "test"), pool)[: sized.test_limit or None]
             for name in sized.sets}

    models = {role: load(mid) for role, mid in ids.items()}
    pipe = Unlock(models["source"], models["target"], source_unlocked=models.get("source_unlocked"),
                  protocol=protocol)
    decoding = replace(protocol.decoding_for(pipe.contrast), max_new_tokens=sized.max_new_tokens)
    # the last n_max questions of the pool; every n's key and alignment questions are its last n
    key_qs, _ = protocol.question_sets([p.question for p in pool], n_max)

    steerings = grid_steerings(pipe, points, key_qs)

    # score: baselines, every grid point on dev and on each test set
    t_locked, t_unlocked = protocol.formats(pipe.target.tokenizer)
    post = models.get("post_trained")
    with _backend(ids["target"], backend) as vllm:
        score = _Scorer(pipe.target, pipe.target_variant, decoding, vllm)
        grid_rows = []
        for p in tqdm(points, desc="grid on dev"):
            grid_rows.append({**p.__dict__, "split": "dev",
                              "accuracy": score(dev, "steered", "dev", steerings[p], p)})
        dev_frame = pd.DataFrame(grid_rows)
        best = points[int(dev_frame["accuracy"].to_numpy().argmax())]
        table = []
        for name, problems in tests.items():
            row = {"set": name, "n_test": len(problems),
                   "target direct": score(problems, "direct", name, variant=Variant(pipe.target, t_locked)),
                   "target + CoT prompt": score(problems, "cot-prompt", name,
                                                variant=Variant(pipe.target, t_unlocked))}
            if post is not None:
                row["post-trained + CoT"] = score(problems, "post-trained", name,
                                                  variant=Variant(post, protocol.formats(post.tokenizer)[1]))
            test_acc = {}
            for p in tqdm(points, desc=f"grid on {name}"):
                test_acc[p] = score(problems, "steered", name, steerings[p], p)
                grid_rows.append({**p.__dict__, "split": name, "accuracy": test_acc[p]})
            top = max(test_acc, key=test_acc.get)
            row |= {"UNLOCK, dev-selected": test_acc[best], "dev-selected setting": best.label,
                    "UNLOCK, best of grid on test": test_acc[top], "best-on-test setting": top.label}
            table.append(row)

    frame = pd.DataFrame(table)
    atomic_write_bytes(out / "grid.csv", pd.DataFrame(grid_rows).to_csv(index=False).encode())
    atomic_write_bytes(out / "outputs.jsonl", "".join(
        json.dumps(r, default=str) + "\n" for r in score.rows).encode())
    run = {"recipe": recipe.name, "dry_run": dry_run, "models": ids, "protocol": protocol.name,
           "grid": {k: list(v) for k, v in sized.grid.items()}, "dev": sized.dev,
           "rank_clamped": [p.label for p in points if p.rank > min(p.n, pipe.source.cfg.d_model,
                                                                     pipe.target.cfg.d_model)],
           "backend": "vllm" if vllm is not None else "torch", "max_new_tokens": sized.max_new_tokens}
    atomic_write_bytes(out / "run.json", json.dumps(run, indent=1).encode())
    path = out / "table.md"
    atomic_write_bytes(path, render_table(recipe, frame, dry_run).encode())
    return path


def render_table(recipe: Recipe, frame: pd.DataFrame, dry_run: bool) -> str:
    """The paper-style table: ours beside the published numbers, both selections labelled."""
    lines = [f"# {recipe.name}{' (dry run: toy sizes, not a result)' if dry_run else ''}", "",
             recipe.description, "",
             "Accuracy (%). *dev-selected*: the grid point best on the dev problems, then tested. "
             "*best of grid on test*: the highest test accuracy over the whole grid, the authors' "
             "selection (optimistic: chosen on the test set). Published: METHOD.md §5.", "",
             "| set | n | target direct | UNLOCK, dev-selected | UNLOCK, best of grid on test | "
             "target + CoT prompt | post-trained + CoT | published direct / UNLOCK / CoT / post-trained |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        pub = recipe.published.get(r["set"], {})
        published = " / ".join(f"{pub[k]:.1f}" if k in pub else "–"
                               for k in ("direct", "unlock", "cot_prompt", "post_trained_cot"))
        post = f"{r['post-trained + CoT']:.1f}" if "post-trained + CoT" in r and pd.notna(r["post-trained + CoT"]) else "–"
        lines.append(
            f"| {r['set']} | {r['n_test']} | {r['target direct']:.1f} | {r['UNLOCK, dev-selected']:.1f} "
            f"({r['dev-selected setting']}) | {r['UNLOCK, best of grid on test']:.1f} "
            f"({r['best-on-test setting']}) | {r['target + CoT prompt']:.1f} | {post} | {published} |"
        )
    return "\n".join(lines) + "\n"
