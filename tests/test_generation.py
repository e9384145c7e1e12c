"""Generation extras: loop stopping, first-token entropy, subset pairing in the summary."""

import math

import pytest
import torch

from unlock_lens.activations import final_logits
from unlock_lens.distributions import entropy
from unlock_lens.errors import UnlockLensError
from unlock_lens.evaluate.results import summarize
from unlock_lens.generation import LoopStop, generate
from unlock_lens.steer import Steering

PROMPTS = ["Tom has 3 apples and buys 5 more.", "A train travels 60 miles", "Each box holds",
           "There are 12 birds on a tree and 4 fly away. How many are left?"]


def test_loop_stop_finds_periodic_tails_only():
    stop = LoopStop(3, max_period=64, min_span=48)
    tails = {True: [[1] * 48, [1, 2, 3, 4, 5, 6, 7, 8] * 6, list(range(40)) * 2],
             False: [list(range(48)), [5] * 47 + [6], [9] * 10 + [1, 2, 3] * 12]}
    for expected, cases in tails.items():
        for tail in cases:  # rows of one batch share a length: test each on its own
            assert stop(torch.tensor([[7] * 3 + tail]), None).item() is expected, tail


def test_loop_stop_ignores_the_prompt_and_short_outputs():
    # a periodic prompt followed by a short periodic output: not enough generated tokens yet
    rows = torch.tensor([[4, 4, 4, 4] * 20 + [4] * 47])
    assert not LoopStop(80)(rows, None).item()
    assert LoopStop(79)(rows, None).item()  # one more generated token completes 48
    with pytest.raises(UnlockLensError, match="max_period"):
        LoopStop(0, max_period=0)


def test_stop_loops_only_truncates(tiny_models):
    model = tiny_models["qwen2"]
    full = generate(model, PROMPTS, max_new_tokens=120, batch_size=4, engine="bridge")
    cut = generate(model, PROMPTS, max_new_tokens=120, batch_size=4, stop_loops=True, engine="bridge")
    for f, c in zip(full, cut, strict=True):
        assert f.text.startswith(c.text) and c.n_tokens <= f.n_tokens
    # random tiny models repeat themselves: the criterion must actually fire here
    assert sum(c.n_tokens for c in cut) < sum(f.n_tokens for f in full)


@pytest.mark.parametrize("engine", ["bridge", "hf"])
@pytest.mark.parametrize("steered", [False, True])
def test_first_token_entropy_matches_the_forward_pass(tiny_models, steered, engine):
    model = tiny_models["llama"]
    steering = None
    if steered:
        d = int(model.cfg.d_model)
        dirs = {layer: 30 * torch.randn(d, generator=torch.Generator().manual_seed(layer))
                for layer in range(int(model.cfg.n_layers))}
        steering = Steering(dirs, alpha=1.0, normalisation="raw", positions="last_prompt")
    gens = generate(model, PROMPTS, max_new_tokens=2, batch_size=3, steering=steering, engine=engine)
    expected = entropy(final_logits(model, PROMPTS, batch_size=3, steering=steering))
    got = torch.tensor([g.first_token_entropy for g in gens])
    torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=1e-4)
    if steered:  # the steered value is not the unsteered one
        plain = entropy(final_logits(model, PROMPTS, batch_size=3))
        assert (got - plain).abs().max() > 1e-3


def _row(pid: str, condition: str, correct: bool, seed=None, entropy=1.0):
    return {"problem_id": pid, "condition": condition, "alpha": None if condition == "direct" else 0.1,
            "seed": seed, "prompt": "", "output": "", "answer": None, "gold": "1",
            "correct": correct, "n_tokens": 3, "cot_format": False, "first_token_entropy": entropy}


def test_summary_pairs_a_condition_run_on_a_subset():
    ids = [f"p{i}" for i in range(6)]
    rows = [_row(i, "direct", k % 3 == 0, entropy=2.0) for k, i in enumerate(ids)]
    # seed s on every third problem, all correct
    rows += [_row(i, "random", True, seed=k % 3, entropy=0.5) for k, i in enumerate(ids)]
    table = summarize(rows, n_boot=200).set_index(["condition", "seed"], drop=False)
    pooled = table[(table.condition == "random") & table.seed.isna()].iloc[0]
    assert pooled["n"] == 6 and pooled["diff"] == pytest.approx(4 / 6)
    one = table[(table.condition == "random") & (table.seed == 0)].iloc[0]
    assert one["n"] == 2  # problems p0 and p3, both correct under direct too
    assert one["diff"] == pytest.approx(0.0)
    two = table[(table.condition == "random") & (table.seed == 1)].iloc[0]
    assert two["diff"] == pytest.approx(1.0)  # p1 and p4, both wrong under direct
    assert table[table.condition == "direct"].iloc[0]["first_token_entropy"] == pytest.approx(2.0)
    assert pooled["first_token_entropy"] == pytest.approx(0.5)
    stray = rows + [_row("q9", "steered", True)]
    with pytest.raises(UnlockLensError, match="not paired"):
        summarize(stray, n_boot=10)


def test_rows_without_entropy_still_summarise():
    rows = [{k: v for k, v in _row("p0", c, True).items() if k != "first_token_entropy"}
            for c in ("direct", "steered")]
    table = summarize(rows, n_boot=10)
    assert math.isnan(table.iloc[0]["first_token_entropy"])


STEERINGS = {
    "none": None,
    "rotate-last": dict(normalisation="rotate", positions="last_prompt", alpha=0.8),
    "raw-all": dict(normalisation="raw", positions="all", alpha=1.0),
    "unit-final": dict(normalisation="unit", positions="final", alpha=2.0),
}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("how", list(STEERINGS))
def test_hf_engine_gives_the_bridge_tokens(tiny_models, arch, how):
    model = tiny_models[arch]
    steering = None
    if STEERINGS[how] is not None:
        d = int(model.cfg.d_model)
        gen = torch.Generator().manual_seed(3)
        dirs = {layer: 4 * torch.randn(d, generator=gen) for layer in range(int(model.cfg.n_layers))}
        steering = Steering(dirs, **STEERINGS[how])
    kw = dict(max_new_tokens=60, batch_size=3, steering=steering, stop_strings=("\n\n",), stop_loops=True)
    bridge = generate(model, PROMPTS, engine="bridge", **kw)
    hf = generate(model, PROMPTS, engine="hf", **kw)
    assert [g.text for g in generate(model, PROMPTS, **kw)] == [g.text for g in hf]  # auto -> hf
    assert [g.text for g in hf] == [g.text for g in bridge]
    assert [g.n_tokens for g in hf] == [g.n_tokens for g in bridge]
    torch.testing.assert_close(torch.tensor([g.first_token_entropy for g in hf]),
                               torch.tensor([g.first_token_entropy for g in bridge]), atol=1e-4, rtol=1e-4)
    if steering is not None:  # the steering acted (else the comparison proves nothing)
        plain = generate(model, PROMPTS, engine="hf", **{**kw, "steering": None})
        assert [g.text for g in plain] != [g.text for g in hf]


def test_hf_engine_removes_hooks_when_generation_raises(tiny_models, monkeypatch):
    from unlock_lens.steer import attached_hooks

    model = tiny_models["llama"]
    d = int(model.cfg.d_model)
    steering = Steering({0: torch.ones(d)}, alpha=1.0, normalisation="raw", positions="all")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model.original_model, "generate", boom)
    with pytest.raises(KeyboardInterrupt):
        generate(model, PROMPTS, engine="hf", steering=steering)
    assert sum(attached_hooks(model).values()) == 0
    with pytest.raises(UnlockLensError, match="unknown engine"):
        generate(model, PROMPTS, engine="vllm")
