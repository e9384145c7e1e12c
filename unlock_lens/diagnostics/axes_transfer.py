"""Per-axis transfer: how much of a target's *own* key's effect a transferred key reproduces,
one behaviour axis at a time (:mod:`unlock_lens.axes`), against direction-level nulls.

For one direction of a model pair (source -> target):

- **maps once**: one set of layer maps per alignment data kind, fitted on trigger-free
  requests (the pool's ``align`` split in each model's locked format) with the library's
  default spec (``tokens+last``, svd rank 256 lowered to the width); keys do not enter the
  fit, so every axis reuses them (:func:`fit_maps`);
- **keys**: per axis and model, the prompt contrast unlocked minus locked format on the
  pool's ``key`` requests (:func:`axis_keys`): the source's key is carried over, the target's
  is the *native* key it is compared with;
- **per axis** on the ``eval`` requests (:func:`measure_axis`), at one alpha (fixed, or chosen
  per axis on the ``dev`` requests by the native key's behaviour effect:
  :meth:`TransferDirection.alpha_for`):

  * native effect: mean behaviour score (:meth:`Axis.score`) of greedy outputs under the
    native key minus unsteered, ranked among ``n_random`` random target directions of the
    native key's per-layer norms (``controls.random_like``; the unit is the direction), and
    the native key's gain in likelihood of its own continuations, ranked the same way;
  * per data kind, the transferred key: likelihood fidelity F with its bootstrap interval and
    its rank / p among ``n_nulls`` random-mapped directions
    (:func:`~unlock_lens.diagnostics.fidelity.pack_fidelity`; reference: the first
    ``fidelity_tokens`` of the native key's greedy continuations), the negated key's F, and the
    cosine of the mapped key to the native key; through the first kind's maps also its
    behaviour effect and its share of the native key's, per-request steerability (mean score
    change) and the anti-steerable fraction (requests whose score went down), and a
    random-mapped control's behaviour effect;
  * the prompting baseline: the unlocked prompt's own outputs and their score.

**No native effect** (rule fixed here, before any output is read): an axis whose native key's
behaviour effect is not positive, or whose direction-level p among the random target
directions is above :data:`NATIVE_EFFECT_LEVEL`, has nothing to transfer; it is reported as
such and left out of the medians (:func:`median_fidelity`). So is one whose native key ends
every output at once (``n_reference`` 0: no continuation to score, F is NaN).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from unlock_lens.activations import Variant, capture, check_layers
from unlock_lens.align import LayerMap
from unlock_lens.align.contrasts import fit_contrast_maps, leave_one_out
from unlock_lens.align.layers import AlignSpec, LayerPairing, map_directions
from unlock_lens.alignment_data import alignment_stats, parse_data
from unlock_lens.axes import Axis, neutral_requests
from unlock_lens.controls import random_like, random_mapped
from unlock_lens.diagnostics.fidelity import (
    Reference,
    direction_rank,
    greedy_reference,
    pack_fidelity,
)
from unlock_lens.diagnostics.similarity import key_cosines
from unlock_lens.errors import UnlockLensError
from unlock_lens.generation import generate
from unlock_lens.interventions import apply_edit
from unlock_lens.masterkey import MasterKey, key_from_captures
from unlock_lens.pack import CapabilityPack
from unlock_lens.prompts import PromptFormat
from unlock_lens.protocol import get_protocol
from unlock_lens.steer import Steering
from unlock_lens.unlock import align_key

#: the native key has an effect when its behaviour effect is positive and its direction-level
#: p among the random target directions is at most this (with 10 directions: above all of them)
NATIVE_EFFECT_LEVEL = 0.1


@dataclass(frozen=True)
class TransferSizes:
    """How many requests, directions and tokens a measurement uses (the defaults fit the real
    pair, both directions and 14 axes, in the time README states)."""

    n_key: int = 32
    n_align: int = 64
    n_eval: int = 8
    n_nulls: int = 30
    n_random: int = 10
    max_new_tokens: int = 16
    fidelity_tokens: int = 4
    batch_size: int = 16
    seed: int = 0

    def check(self, pool_sizes: Mapping[str, int] | None = None) -> None:
        """Refuse sizes that cannot run, one line naming the flag (before any model loads)."""
        for name in ("n_key", "n_align", "n_eval", "n_nulls", "n_random", "max_new_tokens", "fidelity_tokens",
                     "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                flag = "--tokens" if name == "max_new_tokens" else f"--{name.replace('_', '-')}"
                raise UnlockLensError(f"{flag} must be an integer of at least 1, got {value!r}")
        least = math.ceil(1 / NATIVE_EFFECT_LEVEL) - 1
        if self.n_random < least:
            raise UnlockLensError(f"--n-random {self.n_random}: with fewer than {least} random target directions "
                                  f"no native key can reach p <= {NATIVE_EFFECT_LEVEL:g}, so every axis would read "
                                  f"'no native effect'; use at least {least}")
        for split, name in (("key", "n_key"), ("align", "n_align"), ("eval", "n_eval")):
            have = (pool_sizes or {}).get(split)
            if have is not None and getattr(self, name) > have:
                raise UnlockLensError(f"--{name.replace('_', '-')} {getattr(self, name)} is more than the "
                                      f"{have} requests of the pool's {split!r} split; lower it")


def axis_formats(model: Any, axis: Axis) -> tuple[PromptFormat, PromptFormat]:
    """(locked, unlocked) formats of ``axis`` for ``model``: chat when its tokenizer has a template."""
    chat = bool(getattr(model.tokenizer, "chat_template", None))
    return axis.locked_format(chat), axis.unlocked_format(chat)


def axis_keys(model: Any, axes: Sequence[Axis], requests: Sequence[str], *, batch_size: int = 16,
              progress: bool = False) -> dict[str, MasterKey]:
    """Each axis's prompt-driven key in ``model`` (unlocked minus locked format, mean over
    ``requests``). Every axis's locked prompt is the bare request, so it is captured once."""
    if not axes:
        raise UnlockLensError("no axes given: pass at least one Axis")
    layers = check_layers(model, None)
    locked = Variant(model, axis_formats(model, axes[0])[0])

    def states(variant: Variant):
        return capture(model, variant.prompts(requests), layers, batch_size=batch_size,
                       special_tokens=variant.special_tokens)

    h_locked = states(locked)
    keys = {}
    for axis in tqdm(axes, desc="axis keys", disable=not progress, leave=False):
        lf, uf = axis_formats(model, axis)
        unlocked = Variant(model, uf)
        keys[axis.name] = key_from_captures(h_locked, states(unlocked), Variant(model, lf), unlocked,
                                            list(requests), layers=layers, capability=axis.name)
    return keys


#: the alignment data kind fitted on the other axes' keys (:mod:`unlock_lens.align.contrasts`),
#: alone (``contrasts``) or added to token pairs (``tokens+last+contrasts``)
CONTRASTS = "contrasts"


def split_contrasts(kind: str) -> tuple[str | None, bool]:
    """``"tokens+last+contrasts"`` -> ``("tokens+last", True)``, ``"contrasts"`` -> ``(None, True)``,
    ``"last"`` -> ``("last", False)``: the prompt-state kinds (checked) and whether the other
    axes' keys join the fit."""
    parts = [k.strip() for k in str(kind).split("+") if k.strip()]
    rest = "+".join(k for k in parts if k != CONTRASTS) or None
    if rest is not None:
        parse_data(rest)
    elif not parts:
        parse_data(kind)  # the library's one-line error for an empty kind
    return rest, CONTRASTS in parts


def kind_spec(kind: str, base: AlignSpec | None = None) -> AlignSpec:
    """The library's default alignment spec (``get_protocol("library").align``) on data ``kind``."""
    base = base or get_protocol("library").align
    states, _ = split_contrasts(kind)
    return replace(base, data=kind, max_pairs=None if states in (None, "last") else base.max_pairs)


def fit_maps(source_key: MasterKey, source: Variant, target: Variant, requests: Sequence[str],
             kinds: Sequence[str], *, base: AlignSpec | None = None, batch_size: int = 16,
             progress: bool = False) -> dict[str, dict[int, LayerMap]]:
    """Layer maps per data kind from ``source`` to ``target`` (both in their locked formats) on
    trigger-free ``requests``. ``source_key`` only says which layers, hook and last-layer basis
    the maps read: the fit never sees its directions, so the maps serve every axis. Kinds with
    ``contrasts`` depend on the held-out axis: :meth:`TransferDirection.maps_for` fits them."""
    return {kind: align_key(source_key, source, target, requests, kind_spec(kind, base),
                            batch_size=batch_size, progress=progress)
            for kind in kinds if not split_contrasts(kind)[1]}


def _scale_free(normalisation: str) -> bool:
    """Whether an edit ignores the direction's length (``rotate``, ``unit``, ...): probed once."""
    gen = torch.Generator().manual_seed(0)
    h, r = torch.randn(3, 8, generator=gen), torch.randn(8, generator=gen)
    return torch.allclose(apply_edit(h, r, 0.3, normalisation), apply_edit(h, 3 * r, 0.3, normalisation),
                          atol=1e-6)


@dataclass
class TransferDirection:
    """One direction of a pair, set up once for every axis: both models, the source's keys,
    the target's native keys, the maps per data kind and the requests. Greedy outputs are
    kept by condition name: the unsteered outputs, and under an edit that ignores a
    direction's length (``rotate``) the random target directions, serve every axis."""

    source: Any
    target: Any
    source_keys: dict[str, MasterKey]
    native_keys: dict[str, MasterKey]
    maps: dict[str, dict[int, LayerMap]]
    align_requests: list[str]
    eval_requests: list[str]
    alpha: float
    sizes: TransferSizes = field(default_factory=TransferSizes)
    base_spec: AlignSpec | None = None
    kinds: tuple[str, ...] = ()
    dev_requests: list[str] = field(default_factory=list)
    dev_alphas: tuple[float, ...] = ()
    _outputs: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _contrast_maps: dict[tuple[str, str], dict[int, LayerMap]] = field(default_factory=dict, repr=False)
    _token_stats: dict[str, Any] = field(default_factory=dict, repr=False)
    _warned: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds) or tuple(self.maps)

    def maps_for(self, axis: Axis, kind: str) -> dict[int, LayerMap]:
        """The ``kind`` maps that carry ``axis``'s key: the same for every axis, except for a
        ``contrasts`` kind, fitted here on the *other* axes' (source key, native key) pairs
        (:func:`~unlock_lens.align.contrasts.leave_one_out`), alone or added with weight 1 to the
        token statistics of the rest of the kind (``tokens+last+contrasts``)."""
        states, contrasts = split_contrasts(kind)
        if not contrasts:
            return self.maps[kind]
        if (kind, axis.name) not in self._contrast_maps:
            key = self.source_keys[axis.name]
            pairing = LayerPairing.by_depth(key.source.n_layers, int(self.target.cfg.n_layers))
            spec = kind_spec(kind, self.base_spec)
            if states is not None and states not in self._token_stats:
                self._token_stats[states] = alignment_stats(
                    Variant(self.source, axis_formats(self.source, axis)[0]),
                    Variant(self.target, axis_formats(self.target, axis)[0]), self.align_requests, pairing,
                    data=states, max_pairs=spec.max_pairs, seed=spec.data_seed, hook=key.hook,
                    final_layer=key.final_layer, batch_size=self.sizes.batch_size)
            pairs = {name: (self.source_keys[name], self.native_keys[name]) for name in self.source_keys}
            sources, targets = leave_one_out(pairs, axis.name)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self._contrast_maps[kind, axis.name] = fit_contrast_maps(
                    sources, targets, pairing, spec, token_stats=self._token_stats.get(states) if states else None)
            for warning in caught:  # the same rank clamp for every axis: say it once per direction
                if (message := str(warning.message)) not in self._warned:
                    self._warned.add(message)
                    warnings.warn(message, warning.category, stacklevel=2)
        return self._contrast_maps[kind, axis.name]

    def pack(self, axis: Axis, kind: str) -> CapabilityPack:
        """The source's key of ``axis`` through the ``kind`` maps, as a CapabilityPack."""
        src_fmt, tgt_fmt = axis_formats(self.source, axis)[0], axis_formats(self.target, axis)[0]
        return CapabilityPack.from_alignment(
            self.source_keys[axis.name], self.maps_for(axis, kind), source=Variant(self.source, src_fmt),
            target=Variant(self.target, tgt_fmt), questions=self.align_requests,
            spec=kind_spec(kind, self.base_spec), alpha=self.alpha)

    def alpha_for(self, axis: Axis) -> tuple[float, dict[str, Any]]:
        """The alpha ``axis`` is measured at and how it was chosen: ``alpha`` itself, or (with
        ``dev_alphas``) the one of them at which the native key's behaviour effect (mean score
        minus unsteered) is largest on the ``dev_requests`` (the smaller alpha on a tie); the
        evaluation requests are never read."""
        if not self.dev_alphas:
            return self.alpha, {"alpha_from": "fixed"}
        if not self.dev_requests:
            raise UnlockLensError("dev_alphas need dev_requests to choose on (never the eval requests)")
        fmt = axis_formats(self.target, axis)[0]
        prompts = Variant(self.target, fmt).prompts(self.dev_requests)
        base = axis.score(self.outputs("dev unsteered", prompts))
        native = {layer: self.native_keys[axis.name].direction(layer) for layer in self.native_keys[axis.name].layers}
        like = self.pack(axis, self.kinds[0]).steering(self.alpha)
        effects = {a: _effect(axis, self.outputs(f"dev {axis.name} native a{a:g}", prompts, like.like(native, a)),
                              base)[0] for a in sorted(self.dev_alphas)}
        best = max(effects, key=lambda a: (effects[a], -a))
        return best, {"alpha_from": "dev", "dev_effects": {f"{a:g}": e for a, e in effects.items()}}

    def outputs(self, name: str, prompts: Sequence[str], steering: Steering | None = None) -> list[str]:
        """Greedy outputs of the target (``sizes.max_new_tokens``) under ``steering``, generated
        once per ``name`` (name a condition by everything that decides it)."""
        if name not in self._outputs:
            self._outputs[name] = [g.text for g in generate(
                self.target, list(prompts), steering=steering, max_new_tokens=self.sizes.max_new_tokens,
                batch_size=self.sizes.batch_size)]
        return self._outputs[name]


def pool_requests(sizes: TransferSizes) -> dict[str, list[str]]:
    """The neutral pool's requests a measurement uses: ``key``, ``align``, ``dev`` (as many as
    ``eval``, for choosing alpha) and ``eval``, each the first of its disjoint split."""
    n = {"key": sizes.n_key, "align": sizes.n_align, "dev": sizes.n_eval, "eval": sizes.n_eval}
    return {split: neutral_requests(split)[:count] for split, count in n.items()}


def prepare_direction(
    source: Any, target: Any, axes: Sequence[Axis], *, alpha: float, sizes: TransferSizes | None = None,
    kinds: Sequence[str] = ("tokens+last",), source_keys: dict[str, MasterKey] | None = None,
    target_keys: dict[str, MasterKey] | None = None, dev_alphas: Sequence[float] = (), progress: bool = False,
) -> TransferDirection:
    """One direction set up for every axis: each model's axis keys (extracted here unless
    given), the maps per data kind fitted once, and the pool's requests (:func:`pool_requests`)."""
    sizes = sizes or TransferSizes()
    requests, batch = pool_requests(sizes), sizes.batch_size
    source_keys = source_keys or axis_keys(source, axes, requests["key"], batch_size=batch, progress=progress)
    target_keys = target_keys or axis_keys(target, axes, requests["key"], batch_size=batch, progress=progress)
    first = axes[0]
    maps = fit_maps(source_keys[first.name], Variant(source, axis_formats(source, first)[0]),
                    Variant(target, axis_formats(target, first)[0]), requests["align"], kinds, batch_size=batch,
                    progress=progress)
    return TransferDirection(source, target, source_keys, target_keys, maps, requests["align"], requests["eval"],
                             alpha, sizes, kinds=tuple(kinds), dev_requests=requests["dev"],
                             dev_alphas=tuple(dev_alphas))


def _effect(axis: Axis, texts: Sequence[str], baseline: Sequence[float]) -> tuple[float, list[float]]:
    """Mean score of ``texts`` minus the baseline's, and the per-request changes."""
    change = [s - b for s, b in zip(axis.score(list(texts)), baseline, strict=True)]
    return float(np.mean(change)), change


def _steerability(change: Sequence[float]) -> dict[str, float]:
    """Per-request score change: its mean, and the share of requests moved the wrong way (down)."""
    return {"steerability": float(np.mean(change)), "anti_steerable": float(np.mean([c < 0 for c in change]))}


def measure_axis(direction: TransferDirection, axis: Axis, *, progress: bool = False) -> dict[str, Any]:
    """Every measurement of ``axis`` in this direction, as one JSON-able record
    (``native``, ``prompt``, ``kinds[kind]``, ``example``; see the module docstring)."""
    t0 = time.perf_counter()
    d, sizes, tgt = direction, direction.sizes, direction.target
    requests = d.eval_requests
    locked_fmt, unlocked_fmt = axis_formats(tgt, axis)
    locked, unlocked = Variant(tgt, locked_fmt).prompts(requests), Variant(tgt, unlocked_fmt).prompts(requests)
    native_key = d.native_keys[axis.name]
    native_dirs = {layer: native_key.direction(layer) for layer in native_key.layers}
    alpha, chosen = d.alpha_for(axis)
    packs = {kind: d.pack(axis, kind) for kind in d.kinds}
    like = next(iter(packs.values())).steering(alpha)  # edit, positions, hook of every condition
    native = like.like(native_dirs)

    unsteered = d.outputs("unsteered", locked)
    base_scores = axis.score(unsteered)
    try:
        reference = greedy_reference(tgt, locked, name="native", steering=native,
                                     max_new_tokens=sizes.max_new_tokens, batch_size=sizes.batch_size)
    except UnlockLensError:  # the native key ends every output at once: no behaviour, nothing to score
        reference = None
    native_texts = [""] * len(requests)
    for i, text in zip(reference.indices if reference else (), reference.texts if reference else (), strict=True):
        native_texts[i] = text
    native_effect, native_change = _effect(axis, native_texts, base_scores)
    randoms = {f"random-target {s}": random_like(native_dirs, sizes.seed + s) for s in range(sizes.n_random)}
    # random_like keeps each layer's draw: under a length-free edit every axis at this alpha shares them
    shared = f"a{alpha:g} " if _scale_free(like.normalisation) else f"{axis.name} a{alpha:g} "
    random_effects = [_effect(axis, d.outputs(f"{shared}{name}", locked, like.like(dirs)), base_scores)[0]
                      for name, dirs in randoms.items()]
    rank, p = direction_rank(native_effect, random_effects)
    prompt_texts = d.outputs(f"{axis.name} unlocked prompt", unlocked)
    prompt_effect, _ = _effect(axis, prompt_texts, base_scores)

    record: dict[str, Any] = {
        "axis": axis.name, "alpha": alpha, **chosen, "n_eval": len(requests),
        "n_reference": len(reference.prompts) if reference else 0,
        "native": {"score_unsteered": float(np.mean(base_scores)), "effect": native_effect,
                   "random_effects": random_effects, "rank": rank, "p": p, "n_random": len(random_effects),
                   "has_effect": bool(reference and native_effect > 0 and p <= NATIVE_EFFECT_LEVEL),
                   "key_norm": float(torch.stack([v.norm() for v in native_dirs.values()]).mean()),
                   "effective_rank": float(np.mean(native_key.effective_rank)) if native_key.effective_rank
                   else math.nan, **_steerability(native_change)},
        "prompt": {"score": float(np.mean(axis.score(prompt_texts))), "effect": prompt_effect},
        "kinds": {},
    }
    example = {"request": requests[0], "unsteered": unsteered[0], "native": native_texts[0],
               "prompted": prompt_texts[0]}
    if reference is None:
        record["kinds"] = {kind: {"F": math.nan} for kind in packs}
        record["example"], record["seconds"] = example, round(time.perf_counter() - t0, 2)
        return record
    scored = Reference(reference.name, reference.prompts, tuple(t[: sizes.fidelity_tokens] for t in reference.tokens),
                       reference.texts, reference.indices)
    for j, (kind, pack) in enumerate(packs.items()):
        steered = pack.steering(alpha)
        report = pack_fidelity(tgt, pack, native_dirs, locked, alpha=alpha, references=("native",),
                               n_nulls=sizes.n_nulls, seed=sizes.seed, native_reference=scored,
                               extra_candidates=randoms if j == 0 else None, batch_size=sizes.batch_size,
                               progress=progress)["native"]
        rows = report.summary().set_index("condition")
        if j == 0:  # the native key's likelihood gain on its own continuations vs random target directions
            gain = float(report.gain("native").mean())
            ll_rank, ll_p = direction_rank(gain, [float(report.gain(n).mean()) for n in randoms])
            record["native"].update({"ll_gain_per_token": float(rows.loc["native", "gain_per_token"]),
                                     "ll_rank": ll_rank, "ll_p": ll_p})
        key = rows.loc["transferred"]
        record["kinds"][kind] = {
            "F": float(key["F"]), "F_lo": float(key["F_lo"]), "F_hi": float(key["F_hi"]),
            "rank": int(key["rank"]), "p": float(key["p"]), "n_nulls": int(key["n_nulls"]),
            "null_q50": float(rows.loc["nulls q0.5", "F"]), "null_q95": float(rows.loc["nulls q0.95", "F"]),
            "null_max": float(rows.loc["nulls q1", "F"]), "F_negated": float(rows.loc["-transferred", "F"]),
            "cosine_to_native": float(key_cosines(map_directions(pack.key, pack.maps), native_dirs)["cosine"].mean()),
        }
        if j == 0:  # behaviour through the first kind's maps only (generation is the costly part)
            transferred = d.outputs(f"{axis.name} transferred {kind}", locked, steered)
            effect, change = _effect(axis, transferred, base_scores)
            control_dirs = random_mapped(pack.key, pack.maps, sizes.seed)
            control, _ = _effect(axis, d.outputs(f"{axis.name} random-mapped {kind}", locked,
                                                 steered.like(control_dirs)), base_scores)
            record["kinds"][kind].update({
                "effect": effect, "share": effect / native_effect if native_effect > 0 else math.nan,
                "random_mapped_effect": control, **_steerability(change)})
            example[f"transferred ({kind})"] = transferred[0]
    record["example"] = example
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return record


def median_fidelity(records: Sequence[Mapping[str, Any]], kind: str) -> tuple[float, int]:
    """Median F of ``kind`` over the records whose native key has an effect, and how many."""
    values = [r["kinds"][kind]["F"] for r in records if r["native"]["has_effect"] and kind in r["kinds"]]
    return (float(np.median(values)) if values else math.nan), len(values)


def flat_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One table row per data kind of a record: the axis's native and prompt columns repeated."""
    head = {k: v for k, v in record.items() if not isinstance(v, dict)}
    head.update({f"native_{k}": v for k, v in record["native"].items() if k != "random_effects"})
    head["native_random_effect_max"] = float(np.max(record["native"]["random_effects"]))
    head.update({f"prompt_{k}": v for k, v in record["prompt"].items()})
    return [{**head, "kind": kind, **values} for kind, values in record["kinds"].items()]

