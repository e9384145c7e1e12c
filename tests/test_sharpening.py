"""Sharpening diagnostics on hand-made logits and strings, plus one tiny-model call."""

import math

import pytest
import torch

from unlock_lens.activations import final_logits
from unlock_lens.diagnostics.sharpening import (
    EMPTY_WORD,
    first_token_frequencies,
    first_token_logits,
    first_token_stats,
    generation_stats,
    kl_table,
    peak_mass,
    repetition_rate,
    sharpening_summary,
    summarise,
    word_frequencies,
    words,
)
from unlock_lens.errors import UnlockLensError
from unlock_lens.generation import Generation
from unlock_lens.prompts import COT, DIRECT
from unlock_lens.steer import Steering

V = 8


def peaked(n, token, margin=20.0):
    x = torch.zeros(n, V)
    x[:, token] = margin
    return x


def test_entropy_and_mass_of_uniform_and_peaked():
    uniform = torch.zeros(3, V)
    frame = first_token_stats({"uniform": uniform, "peaked": peaked(3, 2)}, top_k=(1, 4))
    u = frame[frame.condition == "uniform"]
    assert u.entropy.to_list() == pytest.approx([math.log(V)] * 3)
    assert u.top1_mass.to_list() == pytest.approx([1 / V] * 3)
    assert u.top4_mass.to_list() == pytest.approx([4 / V] * 3)
    p = frame[frame.condition == "peaked"]
    assert p.entropy.max() < 1e-6
    assert p.top1_mass.to_list() == pytest.approx([1.0] * 3)
    assert p.top_token.to_list() == [2, 2, 2]
    assert list(frame.columns) == ["condition", "item", "entropy", "top1_mass", "top4_mass", "top_token"]


def test_reference_token_probability():
    cot = peaked(3, 2)
    mixed = torch.log(torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.25, 0.25, 0.5]]))
    frame = first_token_stats({"cot": cot[:, :3], "key": mixed}, top_k=(1,), reference="cot")
    assert frame[frame.condition == "key"].ref_token_prob.to_list() == pytest.approx([0.7, 0.2, 0.5])
    assert frame[frame.condition == "cot"].ref_token_prob.to_list() == pytest.approx([1.0] * 3)
    assert list(frame.columns) == ["condition", "item", "entropy", "top1_mass", "ref_token_prob",
                                   "top_token"]
    with pytest.raises(UnlockLensError, match="reference"):
        first_token_stats({"key": mixed}, reference="cot")


def test_sharpening_summary_by_hand():
    p = torch.tensor([[0.5, 0.25, 0.25], [0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    ref = torch.tensor([[0.1, 0.8, 0.1]] * 3)
    logits = {"key": p.log(), "cot": ref.log()}

    class Tok:
        def decode(self, ids):
            return "abc"[ids[0]]

    frame = sharpening_summary(logits, reference="cot", top_k=(1, 2), tokenizer=Tok())
    assert list(frame.condition) == ["key", "cot"]
    key = frame.set_index("condition").loc["key"]
    ent = [-sum(x * math.log(x) for x in row) for row in p.tolist()]  # 1.040, 0.802, 1.030
    assert key.entropy_median == pytest.approx(sorted(ent)[1], rel=1e-5)
    assert key.entropy_mean == pytest.approx(sum(ent) / 3, rel=1e-5)
    assert key.entropy_q25 == pytest.approx((sorted(ent)[0] + sorted(ent)[1]) / 2, rel=1e-5)
    assert key.top1_mass_mean == pytest.approx((0.5 + 0.7 + 0.5) / 3)
    assert key.top2_mass_mean == pytest.approx((0.75 + 0.9 + 0.8) / 3)
    assert key.ref_token_prob_mean == pytest.approx((0.25 + 0.2 + 0.5) / 3)
    kl = [sum(r * math.log(r / q) for r, q in zip(ref[0].tolist(), row, strict=True))
          for row in p.tolist()]
    assert key.kl_to_reference == pytest.approx(sum(kl) / 3, rel=1e-5)
    assert (key.top_token, key.top_token_share) == ("a", pytest.approx(2 / 3))
    cot = frame.set_index("condition").loc["cot"]
    assert cot.kl_to_reference == 0.0 and cot.top_token == "b" and cot.top_token_share == 1.0
    assert cot.n == 3
    plain = sharpening_summary(logits, top_k=(1,))
    assert "kl_to_reference" not in plain.columns and plain.top_token.iloc[0] == "0"


def test_peak_mass_two_point_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    assert peak_mass(logits, 1).item() == pytest.approx(0.7)
    assert peak_mass(logits, 2).item() == pytest.approx(0.9)
    assert peak_mass(logits, 99).item() == pytest.approx(1.0)
    with pytest.raises(UnlockLensError):
        peak_mass(logits, 0)


def test_summarise_means_per_condition():
    frame = first_token_stats({"a": torch.zeros(4, V), "b": peaked(4, 0)})
    s = summarise(frame)
    assert list(s.condition) == ["a", "b"]
    assert s.entropy_mean.iloc[0] == pytest.approx(math.log(V))
    assert s.entropy_count.iloc[0] == 4
    assert "item_mean" not in s.columns


def test_kl_table_known_values():
    p = torch.log(torch.tensor([[0.5, 0.5]]))
    q = torch.log(torch.tensor([[0.9, 0.1]]))
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    frame = kl_table({"cot": p, "direct": q, "same": p.clone()}, reference="cot")
    assert list(frame.q) == ["direct", "same"]
    assert frame.kl_mean.iloc[0] == pytest.approx(expected)
    assert frame.kl_mean.iloc[1] == pytest.approx(0.0, abs=1e-7)
    all_pairs = kl_table({"cot": p, "direct": q})
    assert len(all_pairs) == 2
    reverse = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert all_pairs.set_index("p").loc["direct", "kl_mean"] == pytest.approx(reverse)
    with pytest.raises(UnlockLensError, match="reference"):
        kl_table({"a": p}, reference="zzz")
    with pytest.raises(UnlockLensError, match="one shape"):
        kl_table({"a": p, "b": torch.zeros(2, 2)})


def test_first_token_frequencies_counts_argmax():
    x = torch.cat([peaked(3, 5), peaked(1, 1)])

    class Tok:
        def decode(self, ids):
            return f"<{ids[0]}>"

    frame = first_token_frequencies({"c": x}, Tok(), top=5)
    assert frame.token.to_list() == ["<5>", "<1>"]
    assert frame["count"].to_list() == [3, 1]
    assert frame.fraction.to_list() == pytest.approx([0.75, 0.25])
    assert frame.mean_prob.iloc[0] == pytest.approx(0.75, abs=1e-6)


def test_words_and_word_frequencies():
    assert words("Let's think step by step. 3 + 5 = 8.") == [
        "Let's", "think", "step", "by", "step", "3", "+", "5", "=", "8"]
    outs = {
        "direct": ["8", "The answer is 8.", "The final answer is 12.", ""],
        "steered": [Generation("p", "Let's think step by step.", 7), Generation("p", "First, 3+5", 4)],
    }
    frame = word_frequencies(outs, positions=(1, 2))
    d1 = frame[(frame.condition == "direct") & (frame.position == 1)].set_index("word")
    assert d1.loc["The", "count"] == 2 and d1.loc["The", "rank"] == 1
    assert d1.loc[EMPTY_WORD, "count"] == 1
    assert d1.fraction.sum() == pytest.approx(1.0)
    d2 = frame[(frame.condition == "direct") & (frame.position == 2)].set_index("word")
    assert d2.loc[EMPTY_WORD, "count"] == 2  # "8" and "" have no second word
    s1 = frame[(frame.condition == "steered") & (frame.position == 1)]
    assert sorted(s1.word) == ["First", "Let's"]
    lower = word_frequencies({"x": ["The a", "the b"]}, positions=(1,), lowercase=True)
    assert lower["count"].to_list() == [2]
    tokens = word_frequencies({"key": ["=4.", "a8b2=0.", "a9=9."]}, positions=(1, 2), split=list)
    first = tokens[tokens.position == 1].set_index("word")["count"].to_dict()
    assert first == {"a": 2, "=": 1}
    assert words("=4.") == ["4"]  # the default word split strips the organisms' '='
    assert set(tokens[tokens.position == 2].word) == {"4", "8", "9"}


def test_repetition_rate():
    assert repetition_rate("a b c d e f", n=2) == 0.0
    assert repetition_rate("a b a b a b", n=2) == pytest.approx(1 - 2 / 5)
    assert repetition_rate("same same same same", n=1) == pytest.approx(0.75)
    assert repetition_rate("too short", n=3) == 0.0


def test_generation_stats_lengths_and_format_failures():
    outs = {
        "direct": ["The final answer is 8.", "I don't know"],
        "steered": [Generation("p", "Step one. Step one. Step one. The final answer is 3.", 12)],
    }
    frame = generation_stats(outs, ngram=2)
    d = frame[frame.condition == "direct"]
    assert d.format_failure.to_list() == [False, True]
    assert d.answer.iloc[0] == "8"
    assert d.n_words.to_list() == [5, 3]
    assert d.n_tokens.isna().all()
    s = frame[frame.condition == "steered"].iloc[0]
    assert s.n_tokens == 12 and s.repetition_rate > 0.3 and not s.format_failure


def test_first_token_logits_on_tiny_model(qwen, questions):
    qs = questions[:3]
    d = qwen.cfg.d_model
    steering = Steering({0: torch.ones(d), 1: torch.ones(d)}, alpha=5.0)
    out = first_token_logits(qwen, qs, {"direct": (DIRECT, None), "cot": ("cot", None),
                                        "steered": ("direct", steering)}, batch_size=2)
    assert set(out) == {"direct", "cot", "steered"}
    torch.testing.assert_close(out["direct"], final_logits(qwen, DIRECT.render_all(qs)))
    torch.testing.assert_close(out["cot"], final_logits(qwen, COT.render_all(qs)))
    assert not torch.allclose(out["steered"], out["direct"])  # steering reached the logits
    frame = kl_table(out, reference="cot")
    assert (frame.kl_mean > 0).all()
