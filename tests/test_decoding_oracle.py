"""Decoding oracle: cached, batched, steered generation against full forward passes without a cache.

The oracle is written here on plain ``transformers`` models (a fresh ``from_pretrained`` of
the same directory) and shares no code with unlock_lens: each prompt alone, no padding, no KV
cache, a full forward pass per generated token, and steering emulated by a forward hook on
each decoder layer with its own copy of the edit. unlock_lens must give the same greedy
tokens with either engine, batched with left padding, and the same first-step logits (1e-4).

transformers 5.24 broke the KV cache inside the TransformerLens 4.3 bridge (the cache stayed
empty and every decode step saw only its own token) while every single-forward test passed;
this file is what fails when that class of break comes back (``test_oracle_catches_a_dropped_cache``
shows it does).
"""

from __future__ import annotations

import pytest
import torch
import transformers

from unlock_lens.activations import final_logits
from unlock_lens.generation import generate
from unlock_lens.steer import Steering

ARCHS = ("llama", "qwen2", "gemma3", "gpt2")
# different lengths, so a batch of them is left-padded
PROMPTS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "Each box holds",
    "A train travels 60 miles per hour for 2 hours.",
    "If x / 4 = 6",
    "Sam had 20 dollars and spent 8. How much money is left?",
    "What is 100 minus 37?",
    "A farmer has 15 cows",
    "There are 12 birds on a tree and 4 fly away.",
]
NEW_TOKENS = 20
# (normalisation, positions, alpha, direction norm as a fraction of the layer's residual norm):
# the paper's edit, and a plain addition small enough not to drown the context
STEERINGS = {
    "none": None,
    "rotate-last_prompt": ("rotate", "last_prompt", 0.3, 1.0),
    "raw-all": ("raw", "all", 1.0, 0.05),
    "clamp-final": ("clamp", "final", None, 1.0),  # alpha: 0.5 x the layer's residual norm
}


# --- the oracle: plain transformers, no cache --------------------------------------------------


def _oracle_edit(h: torch.Tensor, r: torch.Tensor, alpha: float, normalisation: str) -> torch.Tensor:
    if normalisation == "raw":
        return h + alpha * r
    if normalisation == "clamp":  # component along r_hat raised to at least alpha
        r_hat = r / r.norm()
        c = h @ r_hat
        return h + (torch.clamp(c, min=alpha) - c).unsqueeze(-1) * r_hat
    assert normalisation == "rotate"
    norm = h.norm(dim=-1, keepdim=True)
    turned = h / norm + alpha * r / r.norm()
    return norm * turned / turned.norm(dim=-1, keepdim=True)


def _decoder_layers(hf: torch.nn.Module) -> torch.nn.ModuleList:
    return hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers


class Oracle:
    """Greedy decoding of one unpadded prompt by full forward passes (``use_cache=False``)."""

    def __init__(self, model_dir, prepend_bos: bool):
        self.hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.tok = transformers.AutoTokenizer.from_pretrained(model_dir)
        self.prepend_bos = prepend_bos

    def ids(self, prompt: str) -> list[int]:
        ids = self.tok(prompt, add_special_tokens=False)["input_ids"]
        return [self.tok.bos_token_id, *ids] if self.prepend_bos else ids

    def _hooks(self, directions, spec, prompt_len: int) -> list:
        if spec is None:
            return []
        normalisation, positions, alpha, _ = spec

        def make(r):
            def hook(module, args, output):
                h = output[0] if isinstance(output, tuple) else output
                h = h.clone()
                if positions == "all":
                    h = _oracle_edit(h, r, alpha, normalisation)
                elif positions == "final":  # the last prompt token and every generated one
                    h[:, prompt_len - 1 :] = _oracle_edit(h[:, prompt_len - 1 :], r, alpha, normalisation)
                else:  # the last prompt token, wherever the sequence has grown to
                    h[:, prompt_len - 1] = _oracle_edit(h[:, prompt_len - 1], r, alpha, normalisation)
                return (h, *output[1:]) if isinstance(output, tuple) else h
            return hook

        return [layer.register_forward_hook(make(directions[i]))
                for i, layer in enumerate(_decoder_layers(self.hf))]

    @torch.no_grad()
    def decode(self, prompt: str, directions=None, spec=None) -> tuple[list[int], torch.Tensor]:
        """Generated ids (cut after EOS) and the first step's logits."""
        ids = torch.tensor([self.ids(prompt)])
        prompt_len = ids.shape[1]
        handles = self._hooks(directions, spec, prompt_len)
        try:
            first = None
            for _ in range(NEW_TOKENS):
                logits = self.hf(input_ids=ids, use_cache=False).logits[0, -1]
                first = logits if first is None else first
                ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
        finally:
            for h in handles:
                h.remove()
        new = ids[0, prompt_len:].tolist()
        eos = self.tok.eos_token_id
        return (new[: new.index(eos)] if eos in new else new), first

    @torch.no_grad()
    def teacher_forced(self, prompt: str, continuation: list[int], directions=None, spec=None) -> torch.Tensor:
        """Log-probabilities of each continuation token after the prompt: one forward pass over
        prompt + continuation, the edit at the last prompt position (``spec``'s rule)."""
        prompt_ids = self.ids(prompt)
        ids = torch.tensor([prompt_ids + list(continuation)])
        handles = self._hooks(directions, spec, len(prompt_ids))
        try:
            logits = self.hf(input_ids=ids, use_cache=False).logits[0]
        finally:
            for h in handles:
                h.remove()
        logp = torch.log_softmax(logits[len(prompt_ids) - 1 : -1].float(), -1)
        return logp.gather(-1, torch.tensor(continuation)[:, None]).squeeze(-1)

    @torch.no_grad()
    def residual_norms(self, prompt: str) -> list[float]:
        """Mean residual-stream norm after each decoder layer (unsteered)."""
        ids = torch.tensor([self.ids(prompt)])
        states = self.hf(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        return [float(h[0].norm(dim=-1).mean()) for h in states[1:]]


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oracles(tiny_dirs, tiny_models) -> dict[str, Oracle]:
    return {a: Oracle(tiny_dirs[a], bool(tiny_models[a].cfg.default_prepend_bos)) for a in ARCHS}


def _directions(model, oracle, spec) -> dict[int, torch.Tensor]:
    d, n = int(model.cfg.d_model), int(model.cfg.n_layers)
    norms = oracle.residual_norms(PROMPTS[0])
    out = {}
    for layer in range(n):
        r = torch.randn(d, generator=torch.Generator().manual_seed(100 + layer))
        out[layer] = spec[3] * norms[layer] * r / r.norm()
    return out


def _case(model, oracle, spec):
    if spec is not None and spec[2] is None:  # clamp level: half the mean residual norm (one level)
        spec = (*spec[:2], 0.5 * sum(oracle.residual_norms(PROMPTS[0])) / int(model.cfg.n_layers), spec[3])
    dirs = _directions(model, oracle, spec) if spec is not None else None
    steering = None if spec is None else Steering(dirs, alpha=spec[2], normalisation=spec[0], positions=spec[1])
    expected = [oracle.decode(p, dirs, spec) for p in PROMPTS]
    return steering, expected, spec


# --- the comparisons --------------------------------------------------------------------------


@pytest.mark.parametrize("steer", list(STEERINGS))
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_generation_matches_the_no_cache_oracle(tiny_models, oracles, arch, steer):
    model, oracle = tiny_models[arch], oracles[arch]
    spec = STEERINGS[steer]
    steering, expected, spec = _case(model, oracle, spec)
    texts = [oracle.tok.decode(ids, skip_special_tokens=True) for ids, _ in expected]
    for engine in ("bridge", "hf"):
        gens = generate(model, PROMPTS, max_new_tokens=NEW_TOKENS, batch_size=4, steering=steering,
                        engine=engine)
        assert [g.text for g in gens] == texts, engine
        assert [g.n_tokens for g in gens] == [len(ids) for ids, _ in expected], engine
    # first-step logits of the batched, left-padded, steered forward pass
    got = final_logits(model, PROMPTS, batch_size=4, steering=steering)
    want = torch.stack([first for _, first in expected])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    if spec is not None:  # the steering must change what is generated, or this proves little
        plain = [oracle.decode(p)[0] for p in PROMPTS]
        assert plain != [ids for ids, _ in expected]


@pytest.mark.parametrize("arch", ARCHS)
def test_oracle_catches_a_dropped_cache(tiny_models, oracles, arch):
    """Emulate the transformers 5.24 break: attention sees no cache. The oracle must notice."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    def drop_cache(module, args, kwargs):
        return args, {k: v for k, v in kwargs.items() if k not in ("past_key_values", "cache", "layer_past")}

    model, oracle = tiny_models[arch], oracles[arch]
    expected = [oracle.tok.decode(oracle.decode(p)[0], skip_special_tokens=True) for p in PROMPTS]
    handles = [m.register_forward_pre_hook(drop_cache, with_kwargs=True)
               for m in model.modules() if isinstance(m, AttentionBridge)]
    assert handles
    try:
        for engine in ("bridge", "hf"):
            broken = [g.text for g in generate(model, PROMPTS, max_new_tokens=NEW_TOKENS, batch_size=4,
                                               engine=engine)]
            assert broken != expected, engine
    finally:
        for h in handles:
            h.remove()
    assert [g.text for g in generate(model, PROMPTS, max_new_tokens=NEW_TOKENS, batch_size=4)] == expected
