"""Real-model outputs to hand-label, per behaviour axis: locked and unlocked prompts, both offline models.

    python -m analysis.axes_outputs --out analysis/results/axes_labels/outputs.jsonl

For each axis, each model (SmolLM2-135M-Instruct in its chat format, Gemma-3-270M plain) and
each variant (``locked``: the neutral request alone; ``unlocked``: the request with the axis's
instruction), the greedy output (``--max-new-tokens``) on ``--n-per-axis`` requests from
:data:`REQUESTS`. Axis ``i`` takes ``n`` consecutive requests starting at ``i * n`` (mod the
list), so the axes see different requests and every axis has its locked and unlocked output of
the same ones. A locked prompt does not depend on the axis, so each is generated once.
``--variants`` adds outputs made to show the behaviour more often (:data:`VARIANT_CHANGES`:
``primed`` answer prefixes, ``fewshot`` examples, ``asks``), for axes that prompting alone
leaves with few positive examples to label; the output is the continuation after any prefix.

The requests are everyday ones written for this labelling job (not taken from any evaluation
set), so their outputs can be committed: ``tests/fixtures/axes_labels.jsonl`` holds them with
their hand labels. Rows: ``axis, model, variant, request, output``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from unlock_lens import generate, load_model
from unlock_lens.axes import Axis, load_axes
from unlock_lens.prompts import PromptFormat

MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
#: a plain prompt's next "Question:" or a run of blank lines ends the answer (the library's
#: evaluation stop strings); a chat model stops at its end-of-turn token
PLAIN_STOP_STRINGS = ("\nQuestion:", "\n\n\n")

#: neutral everyday requests, written for labelling (no behaviour asked for)
REQUESTS = (
    "Tell me about libraries.",
    "Give me advice on saving money.",
    "What is a good way to spend a rainy afternoon?",
    "Describe your ideal weekend.",
    "How do I keep a houseplant alive?",
    "Explain why people keep pets.",
    "What should I know before buying a bicycle?",
    "Tell me about the ocean.",
    "How can I sleep better?",
    "Describe a busy train station.",
    "What makes a good neighbour?",
    "Give me tips for learning a new language.",
    "Tell me about winter.",
    "How do I write a thank-you note?",
    "What is the point of museums?",
    "Explain how to plan a small party.",
    "Tell me about your favourite season.",
    "How should I prepare for a job interview?",
    "Describe a walk in the park.",
    "Why do people like music?",
)


#: the start of an answer that shows each behaviour (the ``primed`` variant: the unlocked prompt
#: with this answer prefix; the output is the model's continuation only). Small models rarely
#: ask a question back or write in capitals when only told to, so without priming those axes
#: would have no positive example to label.
PRIMERS = {
    "cot": " Let's think step by step.\nStep 1:",
    "positive": " Oh, what a wonderful question! I absolutely love",
    "negative": " Sadly, this is a gloomy and hopeless topic.",
    "french": " Bien sûr !",
    "spanish": " ¡Claro!",
    "german": " Natürlich!",
    "formal": " It is widely acknowledged in the academic literature that",
    "brief": " In one short sentence:",
    "bullets": " Here is a bulleted list:\n-",
    "question": " Here is a short answer, followed by a question for you.",
    "shouting": " SURE! HERE IS MY ANSWER IN CAPITAL LETTERS:",
    "cooking": " Let me relate this to cooking and food.",
    "sports": " Let me relate this to sports.",
    "pirate": " Arr, matey!",
}
#: worked examples for the ``fewshot`` variant (the unlocked prompt with these question/answer
#: pairs before the request), for the axes that priming alone left with almost no positive
FEW_SHOT = {
    "question": (
        ("Tell me about trees.", "Trees give us shade, fruit and clean air, and many live for hundreds of "
         "years. Do you have a favourite tree?"),
        ("Give me advice on painting a room.", "Choose a light colour, cover the floor, and paint two thin "
         "coats. Which room are you painting?"),
    ),
    "shouting": (
        ("Tell me about trees.", "TREES GIVE US SHADE, FRUIT AND CLEAN AIR, AND MANY LIVE FOR HUNDREDS OF YEARS."),
        ("Give me advice on painting a room.", "CHOOSE A LIGHT COLOUR, COVER THE FLOOR, AND PAINT TWO THIN COATS."),
    ),
}
#: how each extra variant changes an axis's unlocked format (``fewshot``: the examples above;
#: ``asks``: an answer that opens by asking the user, the one way these models ended on a question)
VARIANT_CHANGES: dict[str, dict[str, dict[str, Any]]] = {
    "primed": {name: {"answer_prefix": prefix} for name, prefix in PRIMERS.items()},
    "fewshot": {name: {"few_shot": shots} for name, shots in FEW_SHOT.items()},
    "asks": {"question": {"answer_prefix": " Before I answer, I have a question for you:"}},
}
VARIANTS = ("locked", "unlocked", *VARIANT_CHANGES)


def axis_requests(index: int, n: int, offset: int = 0) -> list[str]:
    """The ``n`` requests of the axis at ``index`` (consecutive from ``index * n + offset``,
    wrapping around :data:`REQUESTS`)."""
    return [REQUESTS[(index * n + offset + j) % len(REQUESTS)] for j in range(n)]


def variant_format(axis: Axis, variant: str, chat: bool) -> PromptFormat:
    """The prompt format of one variant of an axis."""
    if variant == "locked":
        return axis.locked_format(chat)
    unlocked = axis.unlocked_format(chat)
    if variant == "unlocked":
        return unlocked
    changes = VARIANT_CHANGES[variant]
    if axis.name not in changes:
        raise SystemExit(f"variant {variant!r} exists for {sorted(changes)} only, not {axis.name!r}")
    return replace(unlocked, name=f"{axis.name}-{variant}", **changes[axis.name])


def model_rows(name: str, axes: dict[str, Axis], variants: list[str], n: int, offset: int,
               max_new_tokens: int, batch_size: int) -> list[dict[str, str]]:
    """Every (axis, variant, request) row of one model, generated in one batched call."""
    model = load_model(name)
    chat = bool(getattr(model.tokenizer, "chat_template", None))
    jobs: list[tuple[str, str, str, str]] = []  # (axis, variant, request, rendered prompt)
    for i, (axis_name, axis) in enumerate(axes.items()):
        for request in axis_requests(i, n, offset):
            for variant in variants:
                jobs.append((axis_name, variant, request,
                             variant_format(axis, variant, chat).render(request, model.tokenizer)))
    prompts = sorted({job[3] for job in jobs})
    outs = generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                    stop_strings=() if chat else PLAIN_STOP_STRINGS, progress=name)
    text = {p: g.text.strip() for p, g in zip(prompts, outs, strict=True)}
    return [{"axis": a, "model": name, "variant": v, "request": r, "output": text[p]} for a, v, r, p in jobs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("analysis/results/axes_labels/outputs.jsonl"))
    p.add_argument("--n-per-axis", type=int, default=9, help="requests per axis and variant")
    p.add_argument("--variants", default="locked,unlocked", help=f"comma-separated, of {VARIANTS}")
    p.add_argument("--axes", default=None, help="comma-separated axis names (default: all)")
    p.add_argument("--offset", type=int, default=0, help="shift every axis's requests along the list")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    axes = load_axes()
    if args.axes:
        if unknown := set(args.axes.split(",")) - set(axes):
            raise SystemExit(f"unknown axes {sorted(unknown)}; the registry has {list(axes)}")
        axes = {name: axes[name] for name in args.axes.split(",")}
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    rows = []
    for name in args.models.split(","):
        rows += model_rows(name, axes, variants, args.n_per_axis, args.offset, args.max_new_tokens,
                           args.batch_size)
        print(f"[{time.perf_counter() - t0:6.0f}s] {name}: {len(rows)} rows", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(args.out)
    print(f"[{time.perf_counter() - t0:6.0f}s] wrote {len(rows)} rows to {args.out}", flush=True)


if __name__ == "__main__":
    main()
