"""The likelihood fidelity test: teacher-forced scoring on the shared prefix cache against a
no-cache oracle and greedy generation's choices, its statistics, and its calibration on
organism pairs whose answer is known (easy, hard, planted rotation, random map)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_decoding_oracle import ARCHS, PROMPTS, Oracle, _directions

from unlock_lens.diagnostics.cached_scoring import prefix_cache, score_continuations
from unlock_lens.diagnostics.fidelity import (
    FidelityReport,
    Reference,
    bootstrap_ratio,
    direction_rank,
    fidelity_ratio,
    greedy_reference,
    half_split_direction,
    likelihood_fidelity,
    verdict,
)
from unlock_lens.errors import UnlockLensError
from unlock_lens.steer import Steering

SPEC = ("rotate", "last_prompt", 0.3, 1.0)


@pytest.fixture(scope="module")
def oracles(tiny_dirs, tiny_models) -> dict[str, Oracle]:
    return {a: Oracle(tiny_dirs[a], bool(tiny_models[a].cfg.default_prepend_bos)) for a in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_continuation_scores_equal_full_forward_passes(tiny_models, oracles, arch):
    """Batched, left-padded prompts with ragged continuations on one prefix cache, steered and
    unsteered: the log-probabilities of one full no-cache forward per row (1e-4)."""
    model, oracle = tiny_models[arch], oracles[arch]
    dirs = _directions(model, oracle, SPEC)
    steering = Steering(dirs, alpha=SPEC[2], normalisation=SPEC[0], positions=SPEC[1])
    gen = torch.Generator().manual_seed(0)
    conts = [torch.randint(3, 200, (n,), generator=gen).tolist() for n in (5, 1, 9, 3, 7, 2, 6, 4)]
    cache = prefix_cache(model, PROMPTS, batch_size=3)
    for s, d in ((None, None), (steering, dirs)):
        got = score_continuations(model, cache, conts, s)
        for prompt, cont, row in zip(PROMPTS, conts, got, strict=True):
            want = oracle.teacher_forced(prompt, cont, d, SPEC if s is not None else None)
            torch.testing.assert_close(row, want, atol=1e-4, rtol=1e-4)
    # the edit must matter, or the comparison proves little
    plain = score_continuations(model, cache, conts)
    assert max(float((a - b).abs().max()) for a, b in zip(plain, got, strict=True)) > 1e-2


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_greedy_tokens_are_the_argmax_of_their_own_scores(tiny_models, oracles, arch):
    """The native reference under the native key: every generated token is the oracle's argmax,
    and the cached score of each is the oracle's maximum log-probability."""
    model, oracle = tiny_models[arch], oracles[arch]
    dirs = _directions(model, oracle, SPEC)
    steering = Steering(dirs, alpha=SPEC[2])
    ref = greedy_reference(model, PROMPTS, name="native", steering=steering, max_new_tokens=12, batch_size=4)
    assert len(ref.tokens) == len(PROMPTS) and all(len(t) > 0 for t in ref.tokens)
    scores = score_continuations(model, prefix_cache(model, list(ref.prompts), batch_size=4), ref.tokens, steering)
    for prompt, cont, row in zip(ref.prompts, ref.tokens, scores, strict=True):
        ids = oracle.ids(prompt)
        with torch.no_grad():
            handles = oracle._hooks(dirs, SPEC, len(ids))
            try:
                logits = oracle.hf(input_ids=torch.tensor([ids + list(cont)]), use_cache=False).logits[0]
            finally:
                for h in handles:
                    h.remove()
        logp = torch.log_softmax(logits[len(ids) - 1 : -1].float(), -1)
        assert logp.argmax(-1).tolist() == list(cont)
        torch.testing.assert_close(row, logp.max(-1).values, atol=1e-4, rtol=1e-4)


def test_stop_strings_keep_the_tokens_before_the_cut(tiny_models):
    model = tiny_models["llama"]
    full = greedy_reference(model, PROMPTS[:2], name="x", max_new_tokens=12)
    text = full.texts[0]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = greedy_reference(model, PROMPTS[:1], name="x", max_new_tokens=12, stop_strings=[stop])
    kept = cut.tokens[0]
    assert kept == full.tokens[0][: len(kept)] and len(kept) < len(full.tokens[0])
    assert model.tokenizer.decode(list(kept), skip_special_tokens=True) == cut.texts[0][: len(
        model.tokenizer.decode(list(kept), skip_special_tokens=True))]


def test_direction_rank_and_p():
    nulls = [0.1, 0.5, 0.2, 0.9, 0.3]
    assert direction_rank(1.0, nulls) == (1, 1 / 6)
    assert direction_rank(0.5, nulls) == (2, 3 / 6)   # ties count against the key
    assert direction_rank(-1.0, nulls) == (6, 1.0)
    with pytest.raises(UnlockLensError):
        direction_rank(0.0, [])


def test_fidelity_ratio_is_pooled_and_its_interval_covers_it():
    gain = torch.tensor([1.0, 2.0, 0.0, 1.0])
    native = torch.tensor([2.0, 2.0, 2.0, 2.0])
    assert fidelity_ratio(gain, native) == pytest.approx(0.5)
    lo, hi = bootstrap_ratio(gain, native, n_boot=4000, seed=0)
    assert lo < 0.5 < hi and lo >= 0.0 and hi <= 1.0
    rng = np.random.default_rng(1)
    big = torch.tensor(rng.normal(0.3, 1.0, 400)) + 0.0
    lo2, hi2 = bootstrap_ratio(big, torch.ones(400), n_boot=2000)
    assert lo2 < float(big.mean()) < hi2 and hi2 - lo2 < 0.25


def test_half_split_direction_has_the_keys_norms():
    states = torch.randn(10, 3, 8, generator=torch.Generator().manual_seed(0))
    norms = torch.tensor([1.0, 2.0, 3.0])
    d = half_split_direction(states, norms, seed=0)
    torch.testing.assert_close(d.norm(dim=-1), norms)
    assert not torch.equal(d, half_split_direction(states, norms, seed=1))


def test_report_summary_arithmetic():
    ref = Reference("native", ("a", "b"), ((1, 2), (3,)))
    ll = {"unsteered": torch.tensor([-4.0, -2.0]), "native": torch.tensor([-1.0, -1.0]),
          "key": torch.tensor([-2.5, -1.5]), "n0": torch.tensor([-4.0, -2.0]), "n1": torch.tensor([-3.0, -2.0])}
    kind = {"unsteered": "unsteered", "native": "native", "key": "candidate", "n0": "null", "n1": "null"}
    table = FidelityReport(ref, ll, kind).summary(n_boot=200).set_index("condition")
    # gains: native (3, 1) -> 4; key (1.5, 0.5) -> 2: F = 0.5; nulls' mean gains 0 and 0.5
    assert table.loc["key", "F"] == pytest.approx(0.5)
    assert table.loc["key", "gain_per_token"] == pytest.approx(2.0 / 3)
    assert (table.loc["key", "rank"], table.loc["key", "p"]) == (1, pytest.approx(1 / 3))
    assert table.loc["nulls q1", "F"] == pytest.approx(0.25)


def test_conditions_must_edit_the_last_prompt_position_only(tiny_models):
    model = tiny_models["llama"]
    d = {0: torch.ones(int(model.cfg.d_model))}
    ref = Reference("native", (PROMPTS[0],), ((5, 6),))
    with pytest.raises(UnlockLensError, match="'all-positions'.*last_prompt"):
        likelihood_fidelity(model, ref, native=Steering(d), candidates={
            "all-positions": Steering(d, positions="all")}, progress=False)
    with pytest.raises(UnlockLensError, match="taken"):
        likelihood_fidelity(model, ref, native=Steering(d), candidates={"native": Steering(d)}, progress=False)


# --- calibration on organisms whose answer is known ------------------------------------------


@pytest.fixture(scope="module")
def calibration():
    from analysis.fidelity_organisms import calibrate

    return {case: {row["condition"]: row for row in calibrate(case, n_problems=24, n_nulls=30,
                                                              n_align=128, progress=False)["tables"]["native"]}
            for case in ("easy", "hard", "planted", "random-map")}


def test_easy_pair_key_carries_the_behaviour(calibration):
    row = calibration["easy"]["transferred"]
    assert row["F"] >= 0.8 and row["rank"] == 1 and row["n_nulls"] == 30 and row["p"] <= 1 / 31 + 1e-9
    assert calibration["easy"]["-transferred"]["F"] < 0


def test_hard_pair_and_random_map_are_not_significant(calibration):
    assert calibration["hard"]["transferred"]["p"] > 0.05
    assert calibration["random-map"]["transferred"]["p"] > 0.05


def test_planted_rotation_recovers_the_native_key(calibration):
    row = calibration["planted"]["transferred"]
    assert row["F"] >= 0.95 and row["rank"] == 1


def test_verdict_states_the_rank_p_and_decision():
    ref = Reference("native", ("a", "b"), ((1, 2), (3,)))
    nulls = {f"n{i}": torch.tensor([-4.0 + 0.1 * i, -2.0]) for i in range(30)}  # gains 0 .. 2.9
    ll = {"unsteered": torch.tensor([-4.0, -2.0]), "native": torch.tensor([-1.0, -1.0]),
          "transferred": torch.tensor([-1.5, -2.0]), **nulls}       # mean gain 1.25: above nulls 0..24
    kind = {"unsteered": "unsteered", "native": "native", "transferred": "candidate",
            **{k: "null" for k in nulls}}
    kl = {k: torch.tensor([1.0, 1.0]) + (0.01 * int(k[1:]) if k.startswith("n") and k[1:].isdigit() else 0)
          for k in ll}
    kl["transferred"] = torch.tensor([0.0, 0.0])                     # closer than all 30
    summary = FidelityReport(ref, ll, kind, kl).summary(n_boot=100)
    text = verdict(summary, alpha=0.05)
    assert "F = 0.62" in text and "above 25 of 30" in text and "p = 0.194" in text  # 6 of 31: nulls 25..29 and the key
    assert "closer than 30 of 30 (p = 0.032)" in text
    assert text.endswith("Verdict: not distinguishable from the null directions (rule: p <= 0.05 on F).")
    ll["transferred"] = torch.tensor([-0.5, -2.0])                   # gain 3.5: above every null
    assert "beyond the null directions" in verdict(FidelityReport(ref, ll, kind, kl).summary(n_boot=100), alpha=0.05)


def test_fidelity_by_alpha_on_organisms_gives_one_verdict_per_alpha():
    """The `unlock-lens run` path at toy size: chain-s -> chain-m (trigger-free maps), two alphas,
    30 random-mapped nulls; at the organisms' working alpha the transferred key ranks first."""
    from unlock_lens.align.layers import AlignSpec
    from unlock_lens.diagnostics.fidelity import fidelity_by_alpha
    from unlock_lens.organisms import SHORT_OPS, generate_problems, load_organism
    from unlock_lens.organisms.demo import align_questions, prompt_key, transfer
    from unlock_lens.organisms.task import LOCKED, UNLOCKED

    src, tgt = load_organism("chain-s"), load_organism("chain-m")
    pack = transfer(prompt_key(src), src, tgt, align_questions("trigger-free", 128), AlignSpec(rank=4))
    native = prompt_key(tgt)
    qs = [p.question for p in generate_problems(16, split="dev", n_ops=SHORT_OPS, seed=3)]
    table, lines = fidelity_by_alpha(tgt, pack, {t: native.direction(t) for t in native.layers},
                                     LOCKED.render_all(qs, None), UNLOCKED.render_all(qs, None),
                                     [0.5, 0.05], n_nulls=30, max_new_tokens=16, batch_size=64,
                                     progress=False)
    assert len(lines) == 2 and lines[0].startswith("alpha 0.5: transferred key F = ")
    key = table[(table.alpha == 0.5) & (table.condition == "transferred")].iloc[0]
    assert key["rank"] == 1 and key["n_nulls"] == 30 and "above 30 of 30" in lines[0]
    assert "beyond the null directions" in lines[0]
    assert set(table.alpha) == {0.5, 0.05}
