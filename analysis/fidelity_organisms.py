"""Calibrate the likelihood fidelity test on organism pairs whose answer is known.

    .venv/bin/python -m analysis.fidelity_organisms [--n-problems 128] [--n-nulls 40]

Cases (settings fixed before the run, from ``analysis/results/organisms.md``'s dev picks;
native and transferred keys steer at the same alpha, 0.5, the organisms' dev-best):

- ``easy``: chain-s -> chain-m, maps fitted on trigger-free prompts (svd, rank 4): the
  transferred key unlocks 100% of test problems. Expected: F near 1, the key first among nulls.
- ``hard``: chain-s -> chain-m, maps fitted on the paper's data (locked short chains only;
  svd, rank 16, ``last``): no data kind transfers. Expected: F near 0, an unremarkable rank.
- ``planted``: chain-s -> chain-s turned by a known rotation R (``organisms.planted``), maps
  fitted on token pairs at full rank: the map is R. Expected: F ~ 1.
- ``random-map``: chain-s -> chain-m through random orthogonal maps (the key and its nulls
  through the same random maps): the key is one more random direction. Expected: p uniform.

References are the target's greedy continuations of fresh ``test``-split short chains (seed 1)
under its own key, and under the ``STEP`` trigger. Writes ``results/fidelity_organisms.json``
and the "Likelihood fidelity calibration" section of ``results/organisms.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from unlock_lens.align.base import LayerMap
from unlock_lens.align.layers import AlignSpec
from unlock_lens.diagnostics.fidelity import pack_fidelity
from unlock_lens.models import load_model
from unlock_lens.organisms import SHORT_OPS, generate_problems, load_organism
from unlock_lens.organisms.demo import align_questions, prompt_key, transfer
from unlock_lens.organisms.planted import rotated_copy
from unlock_lens.organisms.registry import organism_dir
from unlock_lens.organisms.task import LOCKED, UNLOCKED, max_new_tokens

OUT = Path(__file__).parent / "results"
ALPHA = 0.5
CASES: dict[str, dict[str, Any]] = {
    "easy": {"regime": "trigger-free", "spec": AlignSpec(method="svd", rank=4)},
    "hard": {"regime": "short-only", "spec": AlignSpec(method="svd", rank=16)},
    "planted": {"regime": "trigger-free", "spec": AlignSpec(method="svd", rank=96, data="tokens+last")},
    "random-map": {"regime": "trigger-free", "spec": AlignSpec(method="svd", rank=4)},
}


def random_orthogonal_maps(maps: dict[int, LayerMap], seed: int = 0) -> dict[int, LayerMap]:
    """Each layer's map replaced by a seeded random orthogonal one of the same shape."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for t, m in maps.items():
        k = min(m.d_src, m.d_tgt)
        q_s = torch.linalg.qr(torch.randn(m.d_src, k, generator=gen))[0]
        q_t = torch.linalg.qr(torch.randn(m.d_tgt, k, generator=gen))[0]
        out[t] = LayerMap(q_s, torch.eye(k), q_t, torch.zeros(m.d_src), torch.zeros(m.d_tgt),
                          method="random-orthogonal", rank=k, source_layer=m.source_layer,
                          target_layer=t)
    return out


def calibrate(case: str, *, n_problems: int = 128, n_nulls: int = 40, n_align: int = 256,
              progress: bool = True) -> dict[str, Any]:
    """One case's F tables (per reference) as plain rows, plus the settings used."""
    cfg = CASES[case]
    source = load_organism("chain-s")
    with tempfile.TemporaryDirectory() as tmp:
        if case == "planted":
            rotated_copy(organism_dir("chain-s"), Path(tmp) / "rot", seed=0)
            target = load_model(str(Path(tmp) / "rot"))
        else:
            target = load_organism("chain-m")
        key = prompt_key(source)
        native = prompt_key(target)
        pack = transfer(key, source, target, align_questions(cfg["regime"], n_align), cfg["spec"],
                        alpha=ALPHA)
        if case == "random-map":
            pack.maps = random_orthogonal_maps(pack.maps)
        questions = [p.question for p in generate_problems(n_problems, split="test", n_ops=SHORT_OPS, seed=1)]
        reports = pack_fidelity(
            target, pack, {t: native.direction(t) for t in native.layers},
            LOCKED.render_all(questions, None), alpha=ALPHA,
            unlocked_prompts=UNLOCKED.render_all(questions, None), n_nulls=n_nulls,
            max_new_tokens=max_new_tokens(max(SHORT_OPS)), batch_size=128, progress=progress,
        )
    return {"case": case, "alpha": ALPHA, "regime": cfg["regime"], "spec": cfg["spec"].record(),
            "n_problems": n_problems, "n_nulls": n_nulls,
            "tables": {name: r.summary().to_dict("records") for name, r in reports.items()}}


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "" if x is None or x != x else format(x, spec)


def markdown(results: list[dict[str, Any]], seconds: float) -> str:
    n = results[0]
    lines = [
        "## Likelihood fidelity calibration",
        "",
        f"Command: `python -m analysis.fidelity_organisms` ({seconds:.0f} s). {n['n_problems']} fresh `test` "
        f"short chains; alpha {ALPHA} for every steering; {n['n_nulls']} random-mapped null directions "
        "per case (random source directions with the key's per-layer norms, through the same maps). "
        "F = (LL_key - LL_unsteered) / (LL_native - LL_unsteered), pooled over problems, 95% paired "
        "bootstrap interval; rank and p (one-sided, permutation) among the null directions: the unit "
        "of that test is the direction. Reference `native`: the target's greedy output under its own "
        "key; `unlocked-prompt`: under the `STEP` trigger, scored after the locked prompt.",
        "",
        "| case | reference | condition | F [95% CI] | gain / token (nats) | rank / nulls | p | nulls F median / q95 / max |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for ref, rows in r["tables"].items():
            q = {row["condition"]: row["F"] for row in rows if row["kind"] == "null"}
            nulls = f"{_fmt(q.get('nulls q0.5'))} / {_fmt(q.get('nulls q0.95'))} / {_fmt(q.get('nulls q1'))}"
            for row in rows:
                if row["kind"] == "null":
                    continue
                lines.append(
                    f"| {r['case']} | {ref} | {row['condition']} | {_fmt(row['F'])} "
                    f"[{_fmt(row['F_lo'])}, {_fmt(row['F_hi'])}] | {_fmt(row['gain_per_token'], '.3f')} | "
                    f"{int(row['rank'])} / {int(row['n_nulls'])} | {_fmt(row['p'], '.3f')} | {nulls} |")
    lines += ["", *reading(results)]
    return "\n".join(lines) + "\n"


def reading(results: list[dict[str, Any]]) -> list[str]:
    """What the table says, with its numbers (the native-key reference)."""
    row = {(r["case"], x["condition"]): x for r in results for x in r["tables"]["native"]}
    out = ["Reading (native-key reference; the decision rule, p <= 0.05 on F among the nulls, was fixed before the run):"]
    for case, want in (("easy", "carries"), ("planted", "carries"), ("hard", "does not carry"),
                       ("random-map", "does not carry")):
        if (case, "transferred") not in row:
            continue
        key, q = row[(case, "transferred")], row[(case, "nulls q0.5")]
        found = "carries" if key["p"] <= 0.05 else "does not carry"
        out.append(f"- `{case}`: F = {key['F']:.2f}, rank {int(key['rank'])} of {int(key['n_nulls'])} nulls "
                   f"(p = {key['p']:.3f}; null median F {q['F']:.2f}): the key {found} the behaviour"
                   f"{'' if found == want else ' (NOT the known answer)'}.")
    if ("hard", "transferred") in row:
        out.append("- F alone does not separate the cases: on the hard pair any direction in the maps' "
                   "subspace raises the likelihood of the step format at this alpha (null median above 0), "
                   "so F is not near 0 there; the rank among nulls is what tells a key from a lucky direction.")
    if ("easy", "native") in row and row[("easy", "native")]["rank"] > 1:
        out.append(f"- On the easy pair some random-mapped directions move the target as far as its own key "
                   f"(the native key ranks {int(row[('easy', 'native')]['rank'])}): a rank-4 map sends most of "
                   "the source space into the target's step-mode subspace, so random-mapped nulls are a strict "
                   "control there, and the transferred key still ranks first.")
    out.append("- Two candidates per case (the key and its negation) are ranked; at p <= 0.05 one of them "
               "clears the nulls by chance about once in ten cases (e.g. the random map's negated key).")
    return out


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the calibration section of organisms.md, leaving the rest as is."""
    text = path.read_text() if path.exists() else ""
    head = "## Likelihood fidelity calibration"
    if head in text:
        before, after = text.split(head, 1)
        rest = after.split("\n## ", 1)
        text = before + section + ("\n## " + rest[1] if len(rest) > 1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-problems", type=int, default=128, help="fresh test problems per case")
    ap.add_argument("--n-nulls", type=int, default=40, help="random-mapped null directions per case")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    args = ap.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        ap.error(f"--cases: unknown {unknown}; choose from {list(CASES)}")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    results = [calibrate(c, n_problems=args.n_problems, n_nulls=args.n_nulls) for c in cases]
    seconds = time.perf_counter() - t0
    OUT.mkdir(exist_ok=True)
    (OUT / "fidelity_organisms.json").write_text(json.dumps(results, indent=1))
    section = markdown(results, seconds)
    write_section(OUT / "organisms.md", section)
    print(section)


if __name__ == "__main__":
    main()
