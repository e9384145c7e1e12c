import pytest
import torch
import transformers

from unlock_lens.activations import Variant, capture, encode, final_logits
from unlock_lens.errors import UnlockLensError

ARCHS = ["qwen2", "llama", "gemma3", "gpt2"]


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_capture_equals_per_prompt(tiny_models, questions, arch):
    model = tiny_models[arch]
    prompts = Variant(model, "direct").prompts(questions[:5]) + ["Hi"]  # very uneven lengths
    batched = capture(model, prompts, batch_size=4)
    single = torch.cat([capture(model, [p]) for p in prompts])
    assert batched.shape == (6, model.cfg.n_layers, model.cfg.d_model)
    assert batched.dtype == torch.float32
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_capture_matches_hf_hidden_states(tiny_dirs, tiny_models, questions, arch):
    """Oracle: HF's own hidden_states[l + 1] is the output of block l (before the final norm)."""
    model = tiny_models[arch]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_dirs[arch], attn_implementation="eager")
    hf.eval()
    prompt = Variant(model, "cot").prompts(questions[:1])
    ids, _ = encode(model, prompt)
    with torch.no_grad():
        hidden = hf(ids, output_hidden_states=True).hidden_states
    ours = capture(model, prompt)[0]
    n = model.cfg.n_layers
    for layer in range(n - 1):  # the last entry of hidden_states is post-final-norm in HF
        torch.testing.assert_close(ours[layer], hidden[layer + 1][0, -1], atol=1e-4, rtol=1e-4)


def test_capture_chosen_layers_and_resid_pre(qwen, questions):
    prompts = questions[:3]
    full = capture(qwen, prompts)
    some = capture(qwen, prompts, [2, 0])
    torch.testing.assert_close(some[:, 0], full[:, 2])
    torch.testing.assert_close(some[:, 1], full[:, 0])
    pre = capture(qwen, prompts, [1, 2], hook="resid_pre")
    torch.testing.assert_close(pre[:, 0], full[:, 0])  # block 1 input == block 0 output
    torch.testing.assert_close(pre[:, 1], full[:, 1])


def test_capture_attaches_only_requested_hooks(qwen, questions, monkeypatch):
    seen = []
    original = qwen.hooks

    def spy(fwd_hooks=(), **kw):
        seen.append([name for name, _ in fwd_hooks])
        return original(fwd_hooks=fwd_hooks, **kw)

    monkeypatch.setattr(qwen, "hooks", spy)
    capture(qwen, questions[:3], [1], batch_size=2)
    assert seen == [["blocks.1.hook_resid_post"]] * 2


def test_left_padding_and_bos(tiny_models):
    llama = tiny_models["llama"]  # prepends BOS by default
    ids, mask = encode(llama, ["a", "a b c d"])
    assert mask[0].tolist()[: ids.shape[1] - 2] == [0] * (ids.shape[1] - 2)
    assert (mask[:, -1] == 1).all()
    bos = llama.tokenizer.bos_token_id
    assert ids[1, 0] == bos and ids[0, -2] == bos


def test_final_logits_match_plain_forward(qwen, questions):
    prompts = questions[:4]
    ours = final_logits(qwen, prompts, batch_size=3)
    for i, p in enumerate(prompts):
        ids, _ = encode(qwen, [p])
        with torch.no_grad():
            ref = qwen(ids)[0, -1]
        torch.testing.assert_close(ours[i], ref, atol=1e-4, rtol=1e-4)


def test_bad_input(qwen):
    with pytest.raises(UnlockLensError, match="empty"):
        capture(qwen, [])
    with pytest.raises(UnlockLensError, match="out of range"):
        capture(qwen, ["x"], [qwen.cfg.n_layers])
    with pytest.raises(UnlockLensError, match="twice"):
        capture(qwen, ["x"], [0, 0])
    with pytest.raises(UnlockLensError, match="longer than the model's context"):
        capture(qwen, ["1 " * 2000])
    with pytest.raises(UnlockLensError, match="batch_size"):
        capture(qwen, ["x"], batch_size=0)
