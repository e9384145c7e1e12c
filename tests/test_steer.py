import pytest
import torch
import transformers

from unlock_lens.activations import capture, encode, final_logits, hook_name
from unlock_lens.errors import UnlockLensError
from unlock_lens.generation import generate
from unlock_lens.steer import Steering, edit_residual

gen = torch.Generator().manual_seed(0)


def rand(*shape):
    return torch.randn(*shape, generator=gen)


def test_edit_formulas():
    h, r = rand(5, 16), rand(16)
    r_hat = r / r.norm()
    rot = edit_residual(h, r, 0.3, "rotate")
    torch.testing.assert_close(rot.norm(dim=-1), h.norm(dim=-1))  # norm preserved
    cos_before = (h @ r_hat) / h.norm(dim=-1)
    cos_after = (rot @ r_hat) / rot.norm(dim=-1)
    assert (cos_after > cos_before).all()  # turned toward r
    expected = h.norm(dim=-1, keepdim=True) * (h / h.norm(dim=-1, keepdim=True) + 0.3 * r_hat)
    expected = expected / (h / h.norm(dim=-1, keepdim=True) + 0.3 * r_hat).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(rot, expected)
    torch.testing.assert_close(edit_residual(h, r, 0.3, "unit"), h + 0.3 * r_hat)
    torch.testing.assert_close(edit_residual(h, r, 0.3, "resid"), h + 0.3 * h.norm(dim=-1, keepdim=True) * r_hat)
    torch.testing.assert_close(edit_residual(h, r, 0.3, "raw"), h + 0.3 * r)
    torch.testing.assert_close(edit_residual(h, r, 0.0, "rotate"), h)
    # the paper's example: alpha 0.1 on an orthogonal h turns by atan(0.1) = 5.71 degrees
    h1, r1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    angle = torch.rad2deg(torch.atan2(edit_residual(h1, r1, 0.1)[1], edit_residual(h1, r1, 0.1)[0]))
    assert abs(float(angle) - 5.7106) < 1e-3
    # negative alpha turns away: removes the capability direction
    assert ((edit_residual(h, r, -0.3) @ r_hat) < (h @ r_hat)).all()


@pytest.mark.parametrize("normalisation", ["rotate", "unit", "resid", "raw"])
def test_steering_equals_manual_hf_hook(tiny_dirs, tiny_models, questions, normalisation):
    """Oracle: the same edit applied with a plain PyTorch forward hook on HF's decoder layer."""
    model = tiny_models["llama"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"], attn_implementation="eager")
    hf.eval()
    layer, alpha = 1, 2.0
    r = rand(model.cfg.d_model)
    prompt = questions[:1]
    ids, _ = encode(model, prompt)

    def hf_hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h.clone()
        h[:, -1] = edit_residual(h[:, -1], r, alpha, normalisation)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = hf.model.layers[layer].register_forward_hook(hf_hook)
    try:
        with torch.no_grad():
            expected = hf(ids).logits[0, -1]
    finally:
        handle.remove()
    steering = Steering({layer: r}, alpha=alpha, normalisation=normalisation)
    ours = final_logits(model, prompt, steering=steering)[0]
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    # and the edited state is exactly the expected edit of the unsteered state
    plain = capture(model, prompt, [layer])[0, 0]
    steered = capture(model, prompt, [layer], steering=steering)[0, 0]
    torch.testing.assert_close(steered, edit_residual(plain, r, alpha, normalisation), atol=1e-5, rtol=1e-5)


def _edited_positions(model, steering, prompts, max_new_tokens=3):
    """Per forward call, a [batch, pos] mask of the positions the steering hook changed.

    A spy attached before the steering hook sees the block output unedited; the next block's
    input (resid_pre) sees it edited.
    """
    layer = next(iter(steering.directions))
    before, after = [], []
    hooks = [
        (hook_name(layer), lambda x, hook: before.append(x.detach().clone())),
        (hook_name(layer + 1, "resid_pre"), lambda x, hook: after.append(x.detach().clone())),
    ]
    with model.hooks(fwd_hooks=hooks):
        generate(model, prompts, steering=steering, max_new_tokens=max_new_tokens)
    return [(a - b).abs().amax(-1) > 1e-6 for a, b in zip(after, before, strict=True)]


@pytest.mark.parametrize("positions", ["last_prompt", "prompt", "final", "all"])
def test_position_rules_with_kv_cache(qwen, questions, positions):
    steering = Steering({1: rand(qwen.cfg.d_model)}, alpha=0.5, positions=positions)
    calls = _edited_positions(qwen, steering, questions[:2])
    assert len(calls) == 3  # one prefill + two one-position decode steps
    prefill, decode = calls[0], calls[1:]
    assert all(step.shape == (2, 1) for step in decode)
    if positions in ("last_prompt", "final"):
        assert prefill[:, -1].all() and not prefill[:, :-1].any()
    else:
        assert prefill.all()
    edits_decode = positions in ("final", "all")
    assert all(bool(step.all()) == edits_decode and bool(step.any()) == edits_decode for step in decode)


def test_hooks_removed_after_exception_mid_generation(qwen, questions):
    prompts = questions[:2]
    before = final_logits(qwen, prompts)
    steering = Steering({0: rand(qwen.cfg.d_model), 2: rand(qwen.cfg.d_model)}, alpha=0.5)
    calls = {"n": 0}

    def boom(x, hook):
        calls["n"] += 1
        if calls["n"] == 2:  # first decode step
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt), qwen.hooks(fwd_hooks=[("blocks.1.hook_resid_post", boom)]):
        generate(qwen, prompts, steering=steering, max_new_tokens=5)
    assert all(not hp._forward_hooks for hp in qwen.hook_dict.values())
    assert torch.equal(final_logits(qwen, prompts), before)


def test_alpha_zero_is_exact_noop_and_nested_contexts_unwind(qwen, questions):
    prompts = questions[:3]
    before = final_logits(qwen, prompts)
    zero = Steering({1: rand(qwen.cfg.d_model)}, alpha=0.0)
    assert torch.equal(final_logits(qwen, prompts, steering=zero), before)
    a = Steering({1: rand(qwen.cfg.d_model)}, alpha=1.0, normalisation="unit")
    b = Steering({1: rand(qwen.cfg.d_model)}, alpha=2.0, normalisation="unit")
    with a.applied(qwen):
        only_a = capture(qwen, prompts, [1])
        with b.applied(qwen):
            both = capture(qwen, prompts, [1])
        after_b = capture(qwen, prompts, [1])
    plain = capture(qwen, prompts, [1])
    torch.testing.assert_close(after_b, only_a)
    b_hat = b.directions[1] / b.directions[1].norm()
    torch.testing.assert_close(both - only_a, (2.0 * b_hat).expand_as(both), atol=1e-5, rtol=0)
    assert torch.equal(final_logits(qwen, prompts), before)
    assert not torch.equal(only_a, plain)


def test_steering_changes_generation_and_batched_equals_single(qwen, questions):
    steering = Steering({layer: rand(qwen.cfg.d_model) for layer in range(3)}, alpha=1.0)
    prompts = questions[:4]
    batched = generate(qwen, prompts, steering=steering, max_new_tokens=8, batch_size=3)
    single = [generate(qwen, [p], steering=steering, max_new_tokens=8)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    plain = generate(qwen, prompts, max_new_tokens=8)
    assert [g.text for g in plain] != [g.text for g in batched]


def test_bad_steering_input(qwen):
    d = qwen.cfg.d_model
    with pytest.raises(UnlockLensError, match="normalisation"):
        Steering({0: rand(d)}, normalisation="bogus")
    with pytest.raises(UnlockLensError, match="positions"):
        Steering({0: rand(d)}, positions="bogus")
    with pytest.raises(UnlockLensError, match="zero"):
        Steering({0: torch.zeros(d)})
    with pytest.raises(UnlockLensError, match="finite"):
        Steering({0: torch.full((d,), float("nan"))})
    with pytest.raises(UnlockLensError, match="d_model"), Steering({0: rand(d + 1)}).applied(qwen):
        pass
    with pytest.raises(UnlockLensError, match="out of range"), Steering({7: rand(d)}).applied(qwen):
        pass
