"""Does steering sharpen the target's output distribution the way a CoT prompt does?

First-token level (from next-token logits after each prompt, per condition): entropy, top-1 /
top-k mass, the probability of a reference condition's first token, the most likely first
tokens, KL between conditions, and a one-row-per-condition summary (:func:`sharpening_summary`). Generation level (from output
strings): the first and second generated word frequencies (the UNLOCK paper's table), output
length, repetition rate, formatting failures (no extractable answer).

All functions except :func:`first_token_logits` are pure and return tidy pandas DataFrames.
A *condition* is a name such as ``"direct"``, ``"cot"``, ``"key"``, ``"native"``, ``"random"``
(the keys :data:`unlock_lens.plots.CONDITIONS` labels the same way in every figure).
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from unlock_lens.activations import final_logits
from unlock_lens.distributions import entropy, kl_divergence
from unlock_lens.errors import UnlockLensError
from unlock_lens.evaluate.answers import extract_answer
from unlock_lens.prompts import PromptFormat, get_format

EMPTY_WORD = "<none>"
"""Placeholder counted when an output has fewer words than the requested position."""


# ---- first-token distributions ------------------------------------------------------------


def peak_mass(logits: Float[Tensor, "n vocab"], k: int) -> Float[Tensor, " n"]:
    """Probability mass a distribution puts on its own ``k`` most likely tokens, per row.

    (``unlock_lens.distributions.top_k_mass`` instead measures mass on *another* distribution's top-k.)
    """
    if k < 1:
        raise UnlockLensError(f"k must be >= 1, got {k}")
    probs = torch.softmax(logits.float(), -1)
    return probs.topk(min(k, probs.shape[-1]), dim=-1).values.sum(-1)


def _check_conditions(logits: Mapping[str, Tensor]) -> None:
    if not logits:
        raise UnlockLensError("no conditions given")
    shapes = {name: tuple(x.shape) for name, x in logits.items()}
    if any(len(s) != 2 for s in shapes.values()) or len({s for s in shapes.values()}) != 1:
        raise UnlockLensError(f"each condition needs [n, vocab] logits of one shape, got {shapes}")


def _reference_tokens(
    logits: Mapping[str, Float[Tensor, "n vocab"]], reference: str | None
) -> Int[Tensor, " n"] | None:
    """The reference condition's most likely token per item (None without a reference)."""
    if reference is None:
        return None
    if reference not in logits:
        raise UnlockLensError(f"reference {reference!r} is not a condition ({list(logits)})")
    return logits[reference].argmax(-1)


def first_token_stats(
    logits: Mapping[str, Float[Tensor, "n vocab"]], *, top_k: Sequence[int] = (1, 5, 10),
    reference: str | None = None,
) -> pd.DataFrame:
    """Per condition and item: ``entropy`` (nats), ``top{k}_mass`` for each k, ``top_token``;
    with a ``reference`` condition also ``ref_token_prob``, the probability put on the
    reference's most likely token for the same item (e.g. the CoT prompt's first token).

    Columns: ``condition, item, entropy, top1_mass, ..., [ref_token_prob,] top_token``.
    """
    _check_conditions(logits)
    ref_tokens = _reference_tokens(logits, reference)
    frames = []
    for name, x in logits.items():
        cols: dict[str, Any] = {"condition": name, "item": range(x.shape[0]),
                                "entropy": entropy(x).tolist()}
        for k in top_k:
            cols[f"top{k}_mass"] = peak_mass(x, k).tolist()
        if ref_tokens is not None:
            probs = torch.softmax(x.float(), -1)
            cols["ref_token_prob"] = probs.gather(-1, ref_tokens[:, None].to(x.device))[:, 0].tolist()
        cols["top_token"] = x.argmax(-1).tolist()
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def summarise(frame: pd.DataFrame, by: str | Sequence[str] = "condition") -> pd.DataFrame:
    """Mean, std and count of every numeric column per group (flat column names ``x_mean``...)."""
    numeric = [c for c in frame.select_dtypes("number").columns if c not in ("item",)]
    grouped = frame.groupby(list([by] if isinstance(by, str) else by), sort=False)[numeric]
    out = grouped.agg(["mean", "std", "count"])
    out.columns = [f"{col}_{stat}" for col, stat in out.columns]
    return out.reset_index()


def kl_table(
    logits: Mapping[str, Float[Tensor, "n vocab"]], *, reference: str | None = None
) -> pd.DataFrame:
    """KL(P || Q) between conditions, averaged over items (nats).

    ``reference`` given: P = that condition, Q = each other one (e.g. ``"cot"``: how far is
    each condition from the CoT-prompted distribution). Otherwise every ordered pair.
    Columns: ``p, q, kl_mean, kl_std, n``.
    """
    _check_conditions(logits)
    names = list(logits)
    if reference is not None and reference not in logits:
        raise UnlockLensError(f"reference {reference!r} is not a condition ({names})")
    pairs = ([(reference, q) for q in names if q != reference] if reference is not None
             else [(p, q) for p in names for q in names if p != q])
    rows = []
    for p, q in pairs:
        kl = kl_divergence(logits[p], logits[q])
        rows.append({"p": p, "q": q, "kl_mean": float(kl.mean()),
                     "kl_std": float(kl.std()) if kl.numel() > 1 else 0.0, "n": kl.numel()})
    return pd.DataFrame(rows, columns=["p", "q", "kl_mean", "kl_std", "n"])


def first_token_frequencies(
    logits: Mapping[str, Float[Tensor, "n vocab"]], tokenizer: Any = None, *, top: int = 10
) -> pd.DataFrame:
    """The most frequent greedy first tokens per condition (argmax of each row's logits).

    Columns: ``condition, rank, token_id, token, count, fraction, mean_prob`` (``mean_prob``:
    the token's probability averaged over all items of the condition). ``token`` is the
    decoded string when a tokenizer is given, else the id as text.
    """
    _check_conditions(logits)
    rows = []
    for name, x in logits.items():
        probs = torch.softmax(x.float(), -1)
        counts = Counter(x.argmax(-1).tolist())
        for rank, (tid, count) in enumerate(counts.most_common(top), start=1):
            token = tokenizer.decode([tid]) if tokenizer is not None else str(tid)
            rows.append({"condition": name, "rank": rank, "token_id": tid, "token": token,
                         "count": count, "fraction": count / x.shape[0],
                         "mean_prob": float(probs[:, tid].mean())})
    return pd.DataFrame(rows, columns=["condition", "rank", "token_id", "token", "count",
                                       "fraction", "mean_prob"])


def sharpening_summary(
    logits: Mapping[str, Float[Tensor, "n vocab"]], *, reference: str | None = None,
    top_k: Sequence[int] = (1, 5), tokenizer: Any = None,
) -> pd.DataFrame:
    """One row per condition: how peaked its first-token distribution is over the items.

    Columns: ``condition, n, entropy_median, entropy_q25, entropy_q75, entropy_mean`` (nats),
    ``top{k}_mass_mean`` per k, then with a ``reference`` condition ``ref_token_prob_mean``
    (mean probability of the reference's first token) and ``kl_to_reference`` (mean
    KL(reference || condition), nats; 0 for the reference itself), and last ``top_token``,
    the greedy first token most items share, with ``top_token_share``.
    """
    stats = first_token_stats(logits, top_k=top_k, reference=reference)
    first = first_token_frequencies(logits, tokenizer, top=1).set_index("condition")
    kl = (kl_table(logits, reference=reference).set_index("q")["kl_mean"]
          if reference is not None else None)
    rows = []
    for name, part in stats.groupby("condition", sort=False):
        ent = part["entropy"]
        row: dict[str, Any] = {
            "condition": name, "n": len(part), "entropy_median": ent.median(),
            "entropy_q25": ent.quantile(0.25), "entropy_q75": ent.quantile(0.75),
            "entropy_mean": ent.mean(),
            **{f"top{k}_mass_mean": part[f"top{k}_mass"].mean() for k in top_k},
        }
        if kl is not None:
            row["ref_token_prob_mean"] = part["ref_token_prob"].mean()
            row["kl_to_reference"] = 0.0 if name == reference else float(kl[name])
        row["top_token"] = first.loc[name, "token"]
        row["top_token_share"] = float(first.loc[name, "fraction"])
        rows.append(row)
    return pd.DataFrame(rows)


def first_token_logits(
    model: Any,
    questions: Sequence[str],
    conditions: Mapping[str, tuple[PromptFormat | str, Any]],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, Float[Tensor, "n vocab"]]:
    """Next-token logits after each question, per condition ``name -> (format, steering)``.

    ``steering`` is a :class:`unlock_lens.steer.Steering` or ``None``; e.g.
    ``{"direct": ("direct", None), "cot": ("cot", None), "key": ("direct", pack.steering())}``.
    One batched pass per condition (``activations.final_logits``); ``progress`` shows a bar
    over the conditions.
    """
    out = {}
    for name, (fmt, steering) in tqdm(conditions.items(), desc="first-token logits",
                                      unit="condition", disable=not progress):
        prompts = get_format(fmt).render_all(questions, model.tokenizer)
        out[name] = final_logits(model, prompts, batch_size=batch_size, steering=steering)
    return out


# ---- generations --------------------------------------------------------------------------

_PUNCT = string.punctuation + "“”‘’…"


def words(text: str) -> list[str]:
    """Whitespace-split words with surrounding punctuation stripped (``"8."`` -> ``"8"``);
    a piece that is all punctuation (``"+"``, ``"="``) is kept as it is."""
    out = []
    for piece in text.split():
        stripped = piece.strip(_PUNCT)
        out.append(stripped or piece)
    return out


def _texts(outputs: Sequence[Any]) -> list[str]:
    """Accept strings or objects with ``.text`` (``generation.Generation``)."""
    return [o if isinstance(o, str) else o.text for o in outputs]


def word_frequencies(
    outputs: Mapping[str, Sequence[Any]], *, positions: Sequence[int] = (1, 2), top: int = 10,
    lowercase: bool = False, split: Callable[[str], list[str]] = words,
) -> pd.DataFrame:
    """Most frequent words at given positions (1 = first generated word) per condition.

    ``split`` cuts a text into words (:func:`words`); ``tokenizer.tokenize`` counts tokens
    instead, for outputs without spaces (the organisms' ``=4.`` / ``a8b2...``).
    Outputs with too few words count as :data:`EMPTY_WORD`, so fractions over all words of a
    (condition, position) sum to 1. Columns: ``condition, position, rank, word, count,
    fraction, n``.
    """
    rows = []
    for name, outs in outputs.items():
        split_texts = [split(t.lower() if lowercase else t) for t in _texts(outs)]
        for pos in positions:
            if pos < 1:
                raise UnlockLensError(f"positions count from 1, got {pos}")
            counts = Counter(w[pos - 1] if len(w) >= pos else EMPTY_WORD for w in split_texts)
            for rank, (word, count) in enumerate(counts.most_common(top), start=1):
                rows.append({"condition": name, "position": pos, "rank": rank, "word": word,
                             "count": count, "fraction": count / max(len(split_texts), 1),
                             "n": len(split_texts)})
    return pd.DataFrame(rows, columns=["condition", "position", "rank", "word", "count",
                                       "fraction", "n"])


def repetition_rate(text: str, n: int = 3) -> float:
    """Fraction of word n-grams that repeat an earlier n-gram: ``1 - unique / total``.

    0.0 when the text has fewer than ``n`` words (nothing can repeat).
    """
    if n < 1:
        raise UnlockLensError(f"n must be >= 1, got {n}")
    w = words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def generation_stats(outputs: Mapping[str, Sequence[Any]], *, ngram: int = 3) -> pd.DataFrame:
    """Per condition and item: length, repetition, formatting failure.

    Columns: ``condition, item, n_chars, n_words, n_tokens`` (from ``Generation.n_tokens``;
    NaN for plain strings), ``repetition_rate`` (word ``ngram``-grams),
    ``format_failure`` (``extract_answer`` finds no answer), ``answer``.
    """
    rows = []
    for name, outs in outputs.items():
        for i, o in enumerate(outs):
            text = o if isinstance(o, str) else o.text
            answer = extract_answer(text)
            rows.append({
                "condition": name, "item": i, "n_chars": len(text),
                "n_words": len(words(text)),
                "n_tokens": float(getattr(o, "n_tokens", float("nan"))),
                "repetition_rate": repetition_rate(text, ngram),
                "format_failure": answer is None, "answer": answer,
            })
    return pd.DataFrame(rows, columns=["condition", "item", "n_chars", "n_words", "n_tokens",
                                       "repetition_rate", "format_failure", "answer"])
