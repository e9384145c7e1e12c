"""Hook hygiene: every public entry point leaves the model unhooked and bit-exact, returning or
raising (a KeyboardInterrupt injected by a hook that raises on its N-th call); nested steering
contexts compose and unwind in order; a Steering pinned to a model refuses any other."""

from __future__ import annotations

import pytest
import torch

from unlock_lens.activations import capture, encode, final_logits
from unlock_lens.diagnostics.distribution_shift import first_token_shift
from unlock_lens.errors import ModelMismatchError
from unlock_lens.generation import generate
from unlock_lens.model_info import ModelInfo
from unlock_lens.prompts import get_format
from unlock_lens.steer import Steering, attached_hooks, edit_residual
from unlock_lens.streaming import capture_to_disk
from unlock_lens.unlock import Unlock

INJECT_AT = "blocks.1.hook_resid_post"


def _rand(d: int, seed: int) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def setup(tiny_models):
    qwen = tiny_models["qwen2"]
    d = qwen.cfg.d_model
    steering = Steering({layer: _rand(d, layer) for layer in range(3)}, alpha=0.7)
    pipe = Unlock(source=qwen, target=qwen, rank=2, alpha=0.7, batch_size=2)
    qs = [
        "Tom has 3 apples and buys 5 more. How many apples does he have?",
        "What is 100 minus 37?",
        "If x / 4 = 6, what is x?",
        "Each box holds 7 pens. How many pens are in 3 boxes?",
    ]
    key = pipe.extract(qs)
    pack = pipe.align(key, qs)
    return qwen, steering, pipe, key, pack, qs


def _entry_points(setup, tmp_path):
    qwen, steering, pipe, key, pack, qs = setup

    def applied():
        with steering.applied(qwen):
            final_logits(qwen, qs, batch_size=2)

    return {
        "capture": lambda: capture(qwen, qs, [0, 2], batch_size=2, steering=steering),
        "final_logits": lambda: final_logits(qwen, qs, batch_size=2, steering=steering),
        "Steering.applied": applied,
        "generate": lambda: generate(qwen, qs[:2], steering=steering, max_new_tokens=3),
        "Unlock.extract": lambda: pipe.extract(qs),
        "Unlock.align": lambda: pipe.align(key, qs),
        "Unlock.generate": lambda: pipe.generate(qs[:2], pack, max_new_tokens=3),
        "first_token_shift": lambda: first_token_shift(
            qwen, qs, get_format("direct"), get_format("cot"), {"s": steering, "plain": None},
            batch_size=2,
        ),
        "capture_to_disk": lambda: capture_to_disk(qwen, qs, None, tmp_path / "acts", batch_size=2),
    }


ENTRY_POINTS = [
    "capture", "final_logits", "Steering.applied", "generate", "Unlock.extract", "Unlock.align",
    "Unlock.generate", "first_token_shift", "capture_to_disk",
]
RAISE_ON_CALL = {"first_token_shift": 3}  # calls 1-2: its unsteered reference pass
STEERED = {"capture", "final_logits", "Steering.applied", "generate", "Unlock.generate",
           "first_token_shift"}


@pytest.mark.parametrize("outcome", ["returns", "interrupted"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_no_hooks_left_and_logits_bit_exact(setup, tmp_path, entry, outcome):
    qwen, _, _, _, _, qs = setup
    baseline = final_logits(qwen, qs)
    level = getattr(qwen, "context_level", 0)
    assert attached_hooks(qwen) == {}
    call = _entry_points(setup, tmp_path)[entry]
    if outcome == "returns":
        call()
    else:
        seen = {"n": 0, "attached_at_raise": None}
        raise_on = RAISE_ON_CALL.get(entry, 2)

        def boom(x, hook):
            seen["n"] += 1
            if seen["n"] == raise_on:  # mid-run: a later batch, or the first decode step
                seen["attached_at_raise"] = sum(attached_hooks(qwen).values())
                raise KeyboardInterrupt
            return x

        with pytest.raises(KeyboardInterrupt), qwen.hooks(fwd_hooks=[(INJECT_AT, boom)]):
            call()
        assert seen["n"] == raise_on
        if entry in STEERED:  # the library's own hooks were on the model when it was interrupted
            assert seen["attached_at_raise"] > 1
    assert attached_hooks(qwen) == {}
    assert getattr(qwen, "context_level", 0) == level
    assert torch.equal(final_logits(qwen, qs), baseline)


def test_nested_additive_contexts_sum_and_unwind_in_order(qwen, questions):
    prompts = questions[:3]
    d = qwen.cfg.d_model
    plain = capture(qwen, prompts, [1])
    a = Steering({1: _rand(d, 10)}, alpha=0.5, normalisation="raw")
    b = Steering({1: _rand(d, 11)}, alpha=2.0, normalisation="unit")
    c = Steering({1: _rand(d, 12)}, alpha=-1.0, normalisation="raw")
    edit = {
        "a": 0.5 * a.directions[1],
        "b": 2.0 * b.directions[1] / b.directions[1].norm(),
        "c": -1.0 * c.directions[1],
    }
    with a.applied(qwen):
        with b.applied(qwen):
            with c.applied(qwen):
                abc = capture(qwen, prompts, [1])
                assert len(attached_hooks(qwen)) == 1 and sum(attached_hooks(qwen).values()) == 3
            ab = capture(qwen, prompts, [1])
        only_a = capture(qwen, prompts, [1])
        # an exception inside an inner context removes that context's hooks only
        with pytest.raises(RuntimeError), b.applied(qwen):
            raise RuntimeError("inner failure")
        still_a = capture(qwen, prompts, [1])
    assert attached_hooks(qwen) == {}
    torch.testing.assert_close(abc - plain, (edit["a"] + edit["b"] + edit["c"]).expand_as(abc),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(ab - plain, (edit["a"] + edit["b"]).expand_as(ab), atol=1e-5, rtol=0)
    torch.testing.assert_close(only_a - plain, edit["a"].expand_as(only_a), atol=1e-5, rtol=0)
    assert torch.equal(still_a, only_a)
    assert torch.equal(capture(qwen, prompts, [1]), plain)


def test_nested_rotations_chain_outer_first(qwen, questions):
    prompts = questions[:2]
    d = qwen.cfg.d_model
    plain = capture(qwen, prompts, [2])
    a = Steering({2: _rand(d, 20)}, alpha=0.3)
    b = Steering({2: _rand(d, 21)}, alpha=0.8)
    with a.applied(qwen), b.applied(qwen):
        both = capture(qwen, prompts, [2])
    expected = edit_residual(edit_residual(plain, a.directions[2], 0.3), b.directions[2], 0.8)
    torch.testing.assert_close(both, expected, atol=1e-5, rtol=1e-5)


def test_single_token_prompt_in_a_later_batch_is_still_steered(qwen, questions):
    """Each batch is its own prefill: a one-token batch after a longer one must be edited."""
    short = "a"
    assert encode(qwen, [short])[0].shape[1] == 1
    steering = Steering({1: _rand(qwen.cfg.d_model, 30)}, alpha=0.5)
    alone = final_logits(qwen, [short], steering=steering)
    mixed = final_logits(qwen, [questions[0], short], steering=steering, batch_size=1)
    assert torch.equal(mixed[1], alone[0])
    assert not torch.equal(alone, final_logits(qwen, [short]))


def test_steering_pinned_to_a_model_refuses_another_of_the_same_shape(tiny_models, questions):
    qwen, llama = tiny_models["qwen2"], tiny_models["llama"]
    assert (qwen.cfg.n_layers, qwen.cfg.d_model) == (llama.cfg.n_layers, llama.cfg.d_model)
    pinned = Steering({0: _rand(qwen.cfg.d_model, 40)}, target=ModelInfo.of(qwen))
    with pytest.raises(ModelMismatchError, match="model id"), pinned.applied(llama):
        pass
    with pytest.raises(ModelMismatchError, match="model id"):
        final_logits(llama, questions[:1], steering=pinned)
    assert attached_hooks(llama) == {}
    with pinned.scaled(0.2).applied(qwen):  # the right model is accepted; scaled keeps the pin
        pass
    with pytest.raises(ModelMismatchError):
        pinned.scaled(0.2).fwd_hooks(llama)
