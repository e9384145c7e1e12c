"""Three checks on the axes run's cosines (post hoc: defined after reading ``axes.md``).

    python -m analysis.axes_checks      # -> analysis/results/axes_checks.md

1. **Shared component of the axis keys.** Per model and layer, the mean cosine between the keys
   of *different* axes (each a prompt contrast: the request with vs without an instruction).
   If it is high, every key carries a common "an instruction was added" direction, and a map
   that carries that direction scores a high cosine to *any* native key; the cosine of a
   mapped key to its native key is then not evidence that the axis itself transferred. The
   same cosine is reported after removing that shared part: each key minus the mean of the
   other axes' keys (leave-one-out, so no key is compared with itself).
2. **Per data kind, raw and without the shared part.** The mapped key's mean cosine to the
   native key per axis: `tokens+last` fitted on the run's 64 alignment requests and on all of
   the pool's ``align`` split (is it short of data?), and `contrasts` (each axis mapped by a
   fit on the other axes' keys, as in the run).
3. **Wrong-axis controls for F.** For each axis with a native effect in the run
   (``analysis/results/axes/report.json``, same alpha, same 8 ``eval`` requests, same 4-token
   native-key reference), F of the axis's own transferred key beside F of the *other 13 axes'*
   source keys through the same maps, and of the target's own keys of the other axes. If a
   wrong axis's key scores as high, F measured the shared "instruction added" part, not the
   axis. Rank: the own key among the 14 mapped keys by mean gain (1 = highest; p = rank / 14).

Keys: 32 ``key`` requests per model, as in the run (``TransferSizes``' defaults).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis import write_keeping_reading
from unlock_lens.activations import Variant
from unlock_lens.align.contrasts import fit_contrast_maps, leave_one_out
from unlock_lens.align.layers import LayerPairing, map_directions
from unlock_lens.axes import load_axes, neutral_requests
from unlock_lens.diagnostics.axes_transfer import (
    TransferSizes,
    axis_formats,
    axis_keys,
    fit_maps,
    kind_spec,
    pool_requests,
    prepare_direction,
)
from unlock_lens.diagnostics.fidelity import Reference, greedy_reference, likelihood_fidelity
from unlock_lens.models import load_model

OUT = Path(__file__).parent / "results" / "axes_checks.md"
RUN_REPORT = Path(__file__).parent / "results" / "axes" / "report.json"


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.double(), dim=-1)


def shared_component(keys: dict, axes: list) -> list[float]:
    """Per layer: mean cosine between different axes' keys."""
    out = []
    for layer in keys[axes[0].name].layers:
        d = unit(torch.stack([keys[a.name].direction(layer) for a in axes]))
        c, n = d @ d.T, len(axes)
        out.append(float((c.sum() - n) / (n * n - n)))
    return out


def mean_cosine(mapped: dict, native: dict) -> float:
    return float(torch.stack([unit(mapped[t]) @ unit(native[t]) for t in mapped]).mean())


def residual(dirs: dict[str, dict], name: str) -> dict:
    """``name``'s directions minus the mean of the other axes' (per layer)."""
    others = [d for a, d in dirs.items() if a != name]
    return {t: dirs[name][t].double() - torch.stack([o[t].double() for o in others]).mean(0) for t in dirs[name]}


def wrong_axis_rows(names: tuple[str, str], source: Any, target: Any, axes: list, source_keys: dict,
                    target_keys: dict, run_report: Path,
                    kinds: tuple[str, ...] = ("tokens+last", "contrasts")) -> list[str]:
    """Part 3 for one direction: own vs wrong-axis keys' F, per axis with a native effect in the run."""
    summary = json.loads(run_report.read_text())
    label = f"{names[0]} → {names[1]}"
    records = {r["axis"]: r for r in summary["records"]
               if (r["source"], r["target"]) == names and r["native"]["has_effect"]}
    sizes = TransferSizes(**summary["settings"]["sizes"])
    d = prepare_direction(source, target, axes, alpha=0.1, sizes=sizes, kinds=kinds, source_keys=source_keys,
                          target_keys=target_keys)
    rows = []
    for axis in axes:
        if axis.name not in records:
            continue
        alpha = records[axis.name]["alpha"]
        locked = Variant(target, axis_formats(target, axis)[0]).prompts(d.eval_requests)
        like = d.pack(axis, kinds[0]).steering(alpha)
        native = like.like({layer: target_keys[axis.name].direction(layer) for layer in target_keys[axis.name].layers})
        ref = greedy_reference(target, locked, name="native", steering=native, max_new_tokens=sizes.max_new_tokens,
                               batch_size=sizes.batch_size)
        ref = Reference(ref.name, ref.prompts, tuple(tok[: sizes.fidelity_tokens] for tok in ref.tokens), ref.texts,
                        ref.indices)
        candidates = {}
        for kind in kinds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                maps = d.maps_for(axis, kind)
            for b in axes:
                candidates[f"{kind}|{b.name}"] = like.like(map_directions(source_keys[b.name], maps))
        for b in axes:
            if b.name != axis.name:
                candidates[f"native|{b.name}"] = like.like(
                    {layer: target_keys[b.name].direction(layer) for layer in target_keys[b.name].layers})
        table = likelihood_fidelity(target, ref, native=native, candidates=candidates,
                                    progress=False).summary(n_boot=200).set_index("condition")
        wrong_native = [table.loc[f"native|{b.name}", "F"] for b in axes if b.name != axis.name]
        for kind in kinds:
            own = table.loc[f"{kind}|{axis.name}"]
            wrong = [table.loc[f"{kind}|{b.name}"] for b in axes if b.name != axis.name]
            rank = 1 + sum(w.gain_per_token >= own.gain_per_token for w in wrong)
            wf = [w.F for w in wrong]
            rows.append(f"| {label} | {axis.name} | {alpha:g} | {kind} | {own.F:.2f} | {np.median(wf):.2f} / "
                        f"{max(wf):.2f} | {rank} | {np.median(wrong_native):.2f} / {max(wrong_native):.2f} |")
    return rows


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="smollm2-135m-instruct,gemma-3-270m")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    names = args.models.split(",")
    models = {n: load_model(n) for n in names}
    axes = list(load_axes().values())
    n_align_all = len(neutral_requests("align"))
    requests = pool_requests(TransferSizes(n_align=n_align_all))
    keys = {n: axis_keys(m, axes, requests["key"]) for n, m in models.items()}
    lines = ["# Axis keys: a shared component, and the alignment data size (post hoc checks)", "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             "## 1. Mean cosine between different axes' keys, per layer", "",
             "| model | " + " | ".join(f"L{i}" for i in range(max(len(k[axes[0].name].layers) for k in keys.values())))
             + " |", "|" + " --- |" * (1 + max(len(k[axes[0].name].layers) for k in keys.values()))]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{c:.2f}" for c in shared_component(keys[n], axes)) + " |")
    lines += ["", "## 2. Mapped key's mean cosine to the native key, per axis", "",
              "`raw`: the keys as the run maps them; `minus shared`: both keys minus the mean of the other "
              "axes' keys (mapped through the same maps on the source side).", "",
              "| direction | maps | " + " | ".join(a.name for a in axes) + " |",
              "|" + " --- |" * (2 + len(axes))]
    for s, t in ((names[0], names[1]), (names[1], names[0])):
        first = axes[0]
        src_dirs = {a.name: {layer: keys[s][a.name].direction(layer) for layer in keys[s][a.name].layers} for a in axes}
        tgt_dirs = {a.name: {layer: keys[t][a.name].direction(layer) for layer in keys[t][a.name].layers} for a in axes}
        fits = {}
        for n_align in (64, n_align_all):
            maps = fit_maps(keys[s][first.name], Variant(models[s], axis_formats(models[s], first)[0]),
                            Variant(models[t], axis_formats(models[t], first)[0]), requests["align"][:n_align],
                            ["tokens+last"])["tokens+last"]
            fits[f"tokens+last, {n_align} requests"] = {a.name: maps for a in axes}
        pairing = LayerPairing.by_depth(keys[s][first.name].source.n_layers, int(models[t].cfg.n_layers))
        pairs = {a.name: (keys[s][a.name], keys[t][a.name]) for a in axes}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rank clamped to the 13 other axes: expected
            fits["contrasts (other axes' keys)"] = {
                a.name: fit_contrast_maps(*leave_one_out(pairs, a.name), pairing, kind_spec("contrasts")) for a in axes}
        for label, per_axis in fits.items():
            raw, shared = [], []
            for a in axes:
                mapped = {b: map_directions(d, per_axis[a.name]) for b, d in src_dirs.items()}
                raw.append(mean_cosine(mapped[a.name], tgt_dirs[a.name]))
                shared.append(mean_cosine(residual(mapped, a.name), residual(tgt_dirs, a.name)))
            for what, row in (("raw", raw), ("minus shared", shared)):
                lines.append(f"| {s} → {t} | {label}, {what} | " + " | ".join(f"{c:.2f}" for c in row) + " |")
    lines += ["", "## 3. Wrong-axis controls: F on each axis's native-key reference", "",
              "Own: the axis's transferred key; wrong mapped: the other 13 axes' source keys through the same "
              "maps (median / max F, own key's rank among the 14 by mean gain); wrong native: the target's own "
              "keys of the other axes (median / max F).", "",
              "| direction | axis | α | kind | own F | wrong mapped median / max | own rank / 14 | "
              "wrong native median / max |", "|" + " --- |" * 8]
    for s, t in ((names[0], names[1]), (names[1], names[0])):
        lines += wrong_axis_rows((s, t), models[s], models[t], axes, keys[s], keys[t], RUN_REPORT)
    lines += ["", f"{time.perf_counter() - t0:.0f} s."]
    return write_keeping_reading(OUT, "\n".join(lines) + "\n")


if __name__ == "__main__":
    print(main())
