"""Alignment data kinds: pairing across tokenizers (hand-checked), plans, subsampling, and a
planted map recovered from token pairs with streamed Gram statistics."""

from __future__ import annotations

import pytest
import torch

from unlock_lens import Variant, load_model
from unlock_lens.activations import capture, tokenize
from unlock_lens.align.pairs import shared_token_ends, word_end_prefixes
from unlock_lens.alignment_data import generate_continuations, parse_data, plan_pairs
from unlock_lens.errors import UnlockLensError
from unlock_lens.organisms.planted import rotated_copy
from unlock_lens.prompts import GENERAL_DIRECT
from unlock_lens.random_models import build_random_model, build_tokenizer

TEXT = "Tom has 3 apples and buys 5 more."


def spans(tok, text):
    return [tuple(s) for s in tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]


def test_pairs_across_two_tokenizers_hand_checked():
    big, small = build_tokenizer(512), build_tokenizer(300)
    # big:   To|m| has| 3| apples| and| buys| 5| more|.         (ends 2 3 7 9 16 20 25 27 32 33)
    # small: T|o|m| h|a|s| 3| a|p|p|les| a|nd| b|u|y|s| 5| m|o|re|.  (22 tokens)
    assert [TEXT[s:e] for s, e in spans(big, TEXT)] == \
        ["To", "m", " has", " 3", " apples", " and", " buys", " 5", " more", "."]
    pairs = shared_token_ends(TEXT, spans(big, TEXT), TEXT, spans(small, TEXT))
    assert pairs == [(0, 1), (1, 2), (2, 5), (3, 6), (4, 10), (5, 12), (6, 16), (7, 17), (8, 20), (9, 21)]
    # every pair ends at the same character: both states have read the same text
    for i, j in pairs:
        assert spans(big, TEXT)[i][1] == spans(small, TEXT)[j][1]


def test_template_tokens_outside_the_shared_text_are_not_paired():
    src, tgt = "Q: " + TEXT + "\nA:", "<user>" + TEXT + "</user>"
    pairs = shared_token_ends(src, [(0, 3), (3, 6), (6, 36), (36, 39)], tgt, [(0, 6), (6, 9), (9, 39), (39, 46)])
    assert pairs == [(1, 1), (2, 2)]  # "Tom" and the rest of the sentence; "Q: ", "\nA:" and tags unpaired


def test_word_end_prefixes():
    assert word_end_prefixes("  a bc  d ") == ["a", "a bc", "a bc  d"]


@pytest.fixture(scope="module")
def two_vocab_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("align_data")
    a = load_model(str(build_random_model(root / "a", "llama", d_model=32, n_layers=2, seed=0, n_ctx=2048)))
    b = load_model(str(build_random_model(root / "b", "qwen2", d_model=48, n_layers=3, seed=1, n_ctx=2048,
                                          vocab_size=300)))
    return a, b


def test_same_tokenizer_pairs_every_position(two_vocab_models):
    a, _ = two_vocab_models
    v = Variant(a, GENERAL_DIRECT)
    plans = plan_pairs(v, v, [TEXT, "What is 2 + 3?"], "tokens")
    for p in plans:
        n = len(tokenize(a, p.source_prompt, special_tokens=v.special_tokens)[0])
        bos = tokenize(a, p.source_prompt, special_tokens=v.special_tokens, offsets=True)[1][0] == (0, 0)
        assert p.source_positions == p.target_positions == list(range(int(bos), n))


def test_cross_tokenizer_plan_and_kinds(two_vocab_models):
    a, b = two_vocab_models
    src, tgt = Variant(a, GENERAL_DIRECT), Variant(b, GENERAL_DIRECT)
    tokens = plan_pairs(src, tgt, [TEXT], "tokens")
    (p,) = tokens
    ids_a, sp_a = tokenize(a, p.source_prompt, special_tokens="tokenizer", offsets=True)
    ids_b, sp_b = tokenize(b, p.target_prompt, special_tokens="tokenizer", offsets=True)
    assert len(ids_a) < len(ids_b) and len(p.source_positions) >= 0.9 * (len(ids_a) - 1)
    assert all(sp_a[i][1] == sp_b[j][1] for i, j in zip(p.source_positions, p.target_positions, strict=True))
    last = plan_pairs(src, tgt, [TEXT], "last")[0]
    assert (last.source_positions, last.target_positions) == ([len(ids_a) - 1], [len(ids_b) - 1])
    text = plan_pairs(src, tgt, [TEXT], "text")
    assert len(text) == len(TEXT.split()) and all(len(q.source_positions) == 1 for q in text)
    both = plan_pairs(src, tgt, [TEXT], "tokens+last")
    assert sorted(both[0].source_positions) == sorted(p.source_positions)  # the last token already pairs


def test_subsampling_is_seeded_and_capped(two_vocab_models):
    a, b = two_vocab_models
    src, tgt = Variant(a, GENERAL_DIRECT), Variant(b, GENERAL_DIRECT)
    texts = [TEXT, "What is 2 + 3?", "A train goes 60 miles per hour for 2 hours."]

    def chosen(seed):
        return [(q.source_prompt, i) for q in plan_pairs(src, tgt, texts, "tokens", max_pairs=40, seed=seed)
                for i in q.source_positions]

    assert len(chosen(0)) == 40 and chosen(0) == chosen(0) and chosen(0) != chosen(1)


def test_bad_data_kind_is_refused():
    with pytest.raises(UnlockLensError, match="tokens\\+last"):
        parse_data("tokens,last")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    src_dir = build_random_model(root / "src", "llama", d_model=32, n_layers=2, seed=3, n_ctx=2048)
    R = rotated_copy(src_dir, root / "rot", seed=0)
    return load_model(str(src_dir)), load_model(str(root / "rot")), R


def test_the_rotated_copy_is_the_source_times_R(planted):
    src, rot, R = planted
    prompts = [TEXT, "What is 2 + 3?"]
    torch.testing.assert_close(capture(rot, prompts), capture(src, prompts) @ R, atol=1e-4, rtol=1e-4)


QUESTIONS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have now?",
    "There are 12 birds on a tree and 4 fly away. How many birds are left?",
    "A train travels 60 miles per hour for 2 hours. How far does it go?",
    "Each box holds 7 pens. How many pens are in 3 boxes?",
]


def test_a_planted_map_is_recovered_from_token_pairs(planted):
    """Target = the source with its residual basis turned by R: the map fitted on token pairs
    (streamed Gram statistics, rank d) is R itself; the paper's last-token data (4 prompts)
    cannot pin a 32-dimensional map."""
    from unlock_lens.align.layers import AlignSpec, LayerPairing
    from unlock_lens.alignment_data import alignment_stats
    from unlock_lens.masterkey import extract_masterkey
    from unlock_lens.prompts import GENERAL_COT
    from unlock_lens.unlock import align_key

    src, rot, R = planted
    s, t = Variant(src, GENERAL_DIRECT), Variant(rot, GENERAL_DIRECT)
    key = extract_masterkey(s, Variant(src, GENERAL_COT), QUESTIONS)
    stats = alignment_stats(s, t, QUESTIONS, LayerPairing.by_depth(2, 2), data="tokens")
    assert all(st.n > 300 for st in stats.values())  # every position of every prompt pairs
    maps = align_key(key, s, t, QUESTIONS, AlignSpec("svd", rank=32, data="tokens"))
    for m in maps.values():
        torch.testing.assert_close(m.weight, R, atol=2e-3, rtol=0)
    last = align_key(key, s, t, QUESTIONS, AlignSpec("svd", rank=4, data="last"))
    assert all(float((m.weight - R).norm() / R.norm()) > 0.5 for m in last.values())
    # the key itself lands where the target's own key is
    for layer, m in maps.items():
        torch.testing.assert_close(m.transform(key.direction(layer)), key.direction(layer) @ R,
                                   atol=1e-3, rtol=1e-3)


def test_pack_records_the_alignment_data(planted):
    from unlock_lens import Unlock

    src, rot, _ = planted
    pipe = Unlock(src, rot, protocol="paper", rank=8)
    pipe_spec = pipe.spec
    from dataclasses import replace

    key = pipe.extract(QUESTIONS)
    pack = pipe.align(key, QUESTIONS, replace(pipe_spec, data="tokens+last", max_pairs=200, data_seed=3))
    assert (pack.alignment["data"], pack.alignment["max_pairs"], pack.alignment["data_seed"]) == \
        ("tokens+last", 200, 3)


def test_dense_rows_are_the_pairs_the_statistics_hold(planted, monkeypatch):
    """``alignment_rows`` keeps the very pairs that ``alignment_stats`` folds (their Gram
    statistics agree), and a registered method with no fit from statistics fits token data from
    those rows through ``align_key``, recovering the planted map."""
    from unlock_lens.align import base
    from unlock_lens.align.base import LayerMap, register_method
    from unlock_lens.align.layers import AlignSpec, LayerPairing
    from unlock_lens.align.stats import STATS_METHODS, GramStats
    from unlock_lens.alignment_data import alignment_rows, alignment_stats
    from unlock_lens.masterkey import extract_masterkey
    from unlock_lens.prompts import GENERAL_COT
    from unlock_lens.unlock import align_key

    src, rot, R = planted
    s, t = Variant(src, GENERAL_DIRECT), Variant(rot, GENERAL_DIRECT)
    pairing = LayerPairing.by_depth(2, 2)
    stats = alignment_stats(s, t, QUESTIONS, pairing, data="tokens+last", max_pairs=150, seed=1)
    H_s, H_t = alignment_rows(s, t, QUESTIONS, pairing, data="tokens+last", max_pairs=150, seed=1)
    assert H_s.shape[:2] == (150, 2) and H_t.shape[:2] == (150, 2)
    for j, layer in enumerate(pairing.target_layers):
        dense = GramStats.from_dense(H_s[:, pairing.source_layers.index(pairing.source_of[layer])], H_t[:, j])
        assert dense.n == stats[layer].n == 150
        torch.testing.assert_close(dense.src_tgt, stats[layer].src_tgt)
        torch.testing.assert_close(dense.tgt_tgt, stats[layer].tgt_tgt)

    monkeypatch.setattr(base, "ALIGNMENT_METHODS", dict(base.ALIGNMENT_METHODS))
    monkeypatch.setattr(base, "_RANK_FREE", set(base._RANK_FREE))

    @register_method("lstsq", uses_rank=False)
    def fit_lstsq(X_src, X_tgt, rank=None, centered=False):
        W = torch.linalg.lstsq(X_src.double(), X_tgt.double()).solution.float()
        d_s, d_t = W.shape
        return LayerMap(torch.eye(d_s), W, torch.eye(d_t), torch.zeros(d_s), torch.zeros(d_t),
                        method="lstsq", rank=min(d_s, d_t), centered=False)

    assert "lstsq" not in STATS_METHODS
    key = extract_masterkey(s, Variant(src, GENERAL_COT), QUESTIONS)
    maps = align_key(key, s, t, QUESTIONS, AlignSpec("lstsq", data="tokens"))
    for m in maps.values():
        assert m.method == "lstsq"
        torch.testing.assert_close(m.weight, R, atol=2e-3, rtol=0)


# ---- continuations: the source's unlocked outputs teacher-forced after the locked prompt -------


def test_continuation_positions_pair_at_shared_character_ends_hand_checked(two_vocab_models):
    """" Tom has 3 apples." after each model's locked prompt. Model a reads it as
    ` Tom| has| 3| apples|.` (ends 4 8 10 17 18 of the continuation), model b as
    ` |T|o|m| h|a|s| |3| a|p|p|les|.` (ends 1 2 3 4 6 7 8 9 10 12 13 14 17 18): five shared ends,
    and no prompt token is paired."""
    a, b = two_vocab_models
    src, tgt = Variant(a, GENERAL_DIRECT), Variant(b, GENERAL_DIRECT)
    cont = " Tom has 3 apples."
    (p,) = plan_pairs(src, tgt, ["What is 2 + 3?"], "continuations", continuations=[cont])
    prompt = GENERAL_DIRECT.render("What is 2 + 3?", a.tokenizer)
    assert (p.source_prompt, p.target_prompt) == (prompt + cont, prompt + cont)
    n_a = len(tokenize(a, p.source_prompt, special_tokens="tokenizer")[0])
    n_b = len(tokenize(b, p.target_prompt, special_tokens="tokenizer")[0])
    assert p.source_positions == [n_a - 5 + k for k in range(5)]
    assert p.target_positions == [n_b - 14 + k for k in (3, 6, 8, 12, 13)]


def test_continuations_combine_and_blank_ones_give_no_pairs(two_vocab_models):
    a, b = two_vocab_models
    src, tgt = Variant(a, GENERAL_DIRECT), Variant(b, GENERAL_DIRECT)
    qs = ["What is 2 + 3?", "What is 4 + 4?"]
    plans = plan_pairs(src, tgt, qs, "continuations+last", continuations=[" Tom has 3 apples.", ""])
    # the last prompt token of both questions (plain prompts), and the continuation of the first only
    assert [len(p.source_positions) for p in plans] == [1, 5, 1]
    assert [p.source_prompt.endswith("apples.") for p in plans] == [False, True, False]


def test_continuations_bad_input_is_refused(two_vocab_models):
    a, b = two_vocab_models
    src, tgt = Variant(a, GENERAL_DIRECT), Variant(b, GENERAL_DIRECT)
    with pytest.raises(UnlockLensError, match="needs the source's unlocked outputs"):
        plan_pairs(src, tgt, ["What is 2 + 3?"], "continuations")
    with pytest.raises(UnlockLensError, match="1 continuations for 2 alignment texts"):
        plan_pairs(src, tgt, ["What is 2 + 3?", "x"], "tokens+continuations", continuations=[" 5"])
    with pytest.raises(UnlockLensError, match="a string for 1 alignment texts"):
        plan_pairs(src, tgt, ["What is 2 + 3?"], "continuations", continuations=" 5")
    with pytest.raises(UnlockLensError, match="continuation tokens must be an int >= 1"):
        generate_continuations(src, ["What is 2 + 3?"], max_new_tokens=0)


@pytest.fixture(scope="module")
def organisms():
    from unlock_lens.organisms import load_organism

    return load_organism("chain-s"), load_organism("chain-m")


def test_continuations_come_from_the_unlocked_variant_and_follow_the_locked_prompt(organisms):
    """chain-s answers a plain prompt directly (``=4.``) and a ``STEP`` prompt with its steps; the
    continuation data holds the steps, after the plain (locked) prompt, on both organisms, and
    every continuation character pairs (one tokenizer); ``align_key`` generates the same ones."""
    from unlock_lens.align.layers import AlignSpec, LayerPairing
    from unlock_lens.alignment_data import alignment_stats
    from unlock_lens.masterkey import extract_masterkey
    from unlock_lens.organisms.demo import align_questions
    from unlock_lens.organisms.task import LOCKED, UNLOCKED, score_completion
    from unlock_lens.unlock import align_key

    s, m = organisms
    qs = align_questions("short-only", 6)
    conts = generate_continuations(Variant(s, UNLOCKED), qs)
    assert conts == generate_continuations(Variant(s, UNLOCKED), qs)  # greedy: deterministic
    direct = generate_continuations(Variant(s, LOCKED), qs)
    assert all(score_completion(q, c).step_format for q, c in zip(qs, conts, strict=True))
    assert not any(score_completion(q, c).step_format for q, c in zip(qs, direct, strict=True))
    plans = plan_pairs(Variant(s, LOCKED), Variant(m, LOCKED), qs, "continuations", continuations=conts)
    for q, c, p in zip(qs, conts, plans, strict=True):
        assert p.source_prompt == p.target_prompt == LOCKED.render(q, s.tokenizer) + c
        n = len(tokenize(s, p.source_prompt, special_tokens=LOCKED.special_tokens)[0])
        assert p.source_positions == p.target_positions == list(range(n - len(c), n))

    pairing = LayerPairing.by_depth(int(s.cfg.n_layers), int(m.cfg.n_layers))
    key = extract_masterkey(Variant(s, LOCKED), Variant(s, UNLOCKED), qs)
    with pytest.raises(UnlockLensError, match="pass unlocked=Variant"):
        align_key(key, Variant(s, LOCKED), Variant(m, LOCKED), qs, AlignSpec("svd", 8, data="continuations"))
    maps = align_key(key, Variant(s, LOCKED), Variant(m, LOCKED), qs, AlignSpec("svd", 8, data="continuations"),
                     unlocked=Variant(s, UNLOCKED))
    stats = alignment_stats(Variant(s, LOCKED), Variant(m, LOCKED), qs, pairing, data="continuations",
                            continuations=conts)
    assert {t: mp.metrics["n_train"] for t, mp in maps.items()} == {t: sum(map(len, conts)) for t in maps}
    for t in maps:
        torch.testing.assert_close(fit_svd8(stats[t]).weight, maps[t].weight)


def fit_svd8(stats):
    from unlock_lens.align.stats import fit_from_stats

    return fit_from_stats(stats, "svd", 8)


def test_continuation_subsampling_is_seeded(organisms):
    from unlock_lens.organisms.demo import align_questions
    from unlock_lens.organisms.task import LOCKED, UNLOCKED

    s, m = organisms
    qs = align_questions("short-only", 6)
    conts = generate_continuations(Variant(s, UNLOCKED), qs)

    def chosen(seed):
        return [(p.source_prompt, i) for p in plan_pairs(Variant(s, LOCKED), Variant(m, LOCKED), qs, "continuations",
                                                         max_pairs=30, seed=seed, continuations=conts)
                for i in p.source_positions]

    assert len(chosen(0)) == 30 and chosen(0) == chosen(0) and chosen(0) != chosen(1)


def test_a_planted_map_is_recovered_from_continuations(planted):
    """The rotated copy again, fitted only on the source's unlocked continuations read after the
    locked prompt: the map is R (a pairing off by one position would not give R)."""
    from unlock_lens.align.layers import AlignSpec
    from unlock_lens.masterkey import extract_masterkey
    from unlock_lens.prompts import GENERAL_COT
    from unlock_lens.unlock import build_pack

    src, rot, R = planted
    s, t, u = Variant(src, GENERAL_DIRECT), Variant(rot, GENERAL_DIRECT), Variant(src, GENERAL_COT)
    key = extract_masterkey(s, u, QUESTIONS)
    spec = AlignSpec("svd", rank=32, data="continuations", continuation_tokens=24)
    pack = build_pack(key, s, t, QUESTIONS, spec, unlocked=u)
    for m in pack.maps.values():
        assert m.metrics["n_train"] >= 40  # decoded text re-tokenised: about 24 positions a question
        torch.testing.assert_close(m.weight, R, atol=2e-3, rtol=0)
    assert (pack.alignment["data"], pack.alignment["continuation_tokens"], pack.alignment["continuation_stop"]) == \
        ("continuations", 24, [])


def test_unlock_align_generates_continuations_with_its_unlocked_variant_and_stop_strings(planted):
    """``Unlock.align`` hands its unlocked variant (the CoT format) to the continuation kind and
    cuts continuations at its protocol's stop strings, recorded in the pack."""
    from dataclasses import replace

    from unlock_lens import Unlock
    from unlock_lens.align.layers import LayerPairing
    from unlock_lens.alignment_data import alignment_stats

    src, rot, _ = planted
    pipe = Unlock(src, rot, protocol="paper", rank=8)
    key = pipe.extract(QUESTIONS)
    spec = replace(pipe.spec, data="continuations", continuation_tokens=12)
    pack = pipe.align(key, QUESTIONS, spec)
    stops = list(pipe.protocol.decoding_for("prompt").stop_strings)
    assert stops and pack.alignment["continuation_stop"] == stops
    conts = generate_continuations(pipe.unlocked, QUESTIONS, max_new_tokens=12, stop_strings=stops)
    stats = alignment_stats(pipe.locked, pipe.target_variant, QUESTIONS, LayerPairing.by_depth(2, 2),
                            data="continuations", continuations=conts, final_layer=key.final_layer)
    assert {t: m.metrics["n_train"] for t, m in pack.maps.items()} == {t: s.n for t, s in stats.items()}
    for t, m in pack.maps.items():
        torch.testing.assert_close(m.weight, fit_svd8(stats[t]).weight)
