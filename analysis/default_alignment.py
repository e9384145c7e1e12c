"""Does the library's default alignment data (``tokens+last``, high rank) cost anything where the
paper's ``last`` already works? The organisms, both directions, both alignment regimes.

    python -m analysis.default_alignment      # -> analysis/results/default_alignment.md

For each direction (chain-s -> chain-m, chain-m -> chain-s) and alignment regime
(``trigger-free``: the easy pair, where ``last`` works; ``short-only``: the paper's data, the
hard pair), maps fitted on 256 ``align`` questions with ``last`` (svd k=16, the paper's) and
``tokens+last`` (svd k=16 and k=96, i.e. the smaller model's full width: the library's
``rank=256`` lowered to it); the mapped key's mean cosine to the target's own key and the
accuracy on 100 ``dev`` problems at alpha 0.2 / 0.5 / 1.0, beside the target's direct accuracy.
A check of the default, not a selection: nothing here is chosen on these numbers.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

from unlock_lens.align.layers import AlignSpec
from unlock_lens.organisms import SHORT_OPS, generate_problems, load_organism
from unlock_lens.organisms.demo import (
    align_questions,
    cosine_to_native,
    evaluate,
    prompt_key,
    transfer,
)
from unlock_lens.organisms.task import LOCKED
from unlock_lens.steer import Steering

OUT = Path(__file__).parent / "results" / "default_alignment.md"
ALPHAS = (0.2, 0.5, 1.0)
FITS = (("last", 16), ("tokens+last", 16), ("tokens+last", 96))
REGIMES = ("trigger-free", "short-only")


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    zoo = {n: load_organism(n) for n in ("chain-s", "chain-m")}
    keys = {n: prompt_key(m) for n, m in zoo.items()}
    dev = generate_problems(100, split="dev", n_ops=SHORT_OPS)
    lines = ["| pair | regime | data | rank | mean cos to native | " + " | ".join(f"acc α {a:g}" for a in ALPHAS)
             + " | target direct |", "|---|---|---|---|---|" + "---|" * len(ALPHAS) + "---|"]
    for s, t in (("chain-s", "chain-m"), ("chain-m", "chain-s")):
        direct = evaluate(zoo[t], dev, LOCKED).accuracy
        for regime in REGIMES:
            for data, rank in FITS:
                spec = AlignSpec("svd", rank, data=data, max_pairs=4000, clamp_rank=True)
                with warnings.catch_warnings():  # rank 96 > d_src 96 / d_tgt 128 is lowered on purpose
                    warnings.simplefilter("ignore", UserWarning)
                    dirs = transfer(keys[s], zoo[s], zoo[t], align_questions(regime, 256), spec).target_directions()
                cos = cosine_to_native(dirs, keys[t])
                accs = [evaluate(zoo[t], dev, LOCKED, Steering(dirs, alpha=a)).accuracy for a in ALPHAS]
                lines.append(f"| {s} → {t} | {regime} | {data} | {rank} | {sum(cos.values()) / len(cos):.2f} | "
                             + " | ".join(f"{a:.0%}" for a in accs) + f" | {direct:.0%} |")
    intro, _, body = __doc__.split("\n\n", 2)
    text = ("# The default alignment data on the organisms\n\n" + intro + "\n\n" + body.strip()
            + f"\n\n`python -m analysis.default_alignment` ({time.perf_counter() - t0:.0f} s, "
            f"{args.threads} thread(s)).\n\n" + "\n".join(lines) + "\n")
    args.out.write_text(text)
    return args.out


if __name__ == "__main__":
    print(main())
