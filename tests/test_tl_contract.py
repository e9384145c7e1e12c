"""The hook-point contract: capture, final_logits and Steering work on any HookedRootModule.

The stand-in is built from TransformerLens's own ``HookedRootModule`` and ``HookPoint`` (kept in
TL 4 for custom models; TL 3's ``HookedTransformer`` is built on them too) and exposes only what
unlock_lens relies on: ``blocks.{l}.hook_resid_pre`` / ``hook_resid_post`` hook points,
``hooks(fwd_hooks=...)``, ``cfg.n_layers`` / ``d_model`` / ``default_prepend_bos``, a
``tokenizer`` and ``forward(ids, attention_mask=..., return_type=...)``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from unlock_lens.activations import capture, encode, final_logits
from unlock_lens.model_info import ModelInfo
from unlock_lens.random_models import build_tokenizer
from unlock_lens.steer import Steering, edit_residual

PROMPTS = [
    "Question: Tom has 3 apples and buys 5 more. How many?\nAnswer:",
    "Question: 12 - 4 = ?\nAnswer:",
    "Question: A train travels 60 miles per hour for 2 hours. How far?\nAnswer:",
]


class _Block(nn.Module):
    """Residual block whose mixer is a causal mean over the real (unmasked) positions."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.hook_resid_pre = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: Float[Tensor, "b p d"], mask: Float[Tensor, "b p"]) -> Float[Tensor, "b p d"]:
        x = self.hook_resid_pre(x)
        w = mask[:, :, None]
        mixed = (x * w).cumsum(1) / w.cumsum(1).clamp_min(1.0)
        return self.hook_resid_post(x + self.mlp(mixed))


class MiniHooked(HookedRootModule):
    """A TL-3-style hooked model: embed + pos_embed -> blocks -> unembed."""

    def __init__(self, n_layers: int = 3, d_model: int = 32, n_ctx: int = 128, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.tokenizer = build_tokenizer()
        self.cfg = SimpleNamespace(n_layers=n_layers, d_model=d_model, n_ctx=n_ctx, device="cpu",
                                   default_prepend_bos=True, model_name="mini-hooked")
        vocab = len(self.tokenizer)
        self.embed = nn.Embedding(vocab, d_model)
        self.pos_embed = nn.Embedding(n_ctx, d_model)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(_Block(d_model) for _ in range(n_layers))
        self.unembed = nn.Linear(d_model, vocab)
        self.setup()
        self.eval()

    def _run(self, ids: Int[Tensor, "b p"], mask: Tensor | None, pos: Tensor | None, return_type: str | None):
        mask = torch.ones_like(ids) if mask is None else mask
        pos = (mask.cumsum(-1) - 1).clamp(min=0) if pos is None else pos
        x = self.hook_embed(self.embed(ids) + self.pos_embed(pos))
        for block in self.blocks:
            x = block(x, mask.float())
        return self.unembed(x) if return_type == "logits" else None

    def forward(self, input, return_type="logits", attention_mask=None, position_ids=None):
        return self._run(input, attention_mask, position_ids, return_type)


class MiniHookedTL3Signature(MiniHooked):
    """TL 3 ``HookedTransformer.forward`` takes ``attention_mask`` but no ``position_ids``
    (it derives left-padded positions from the mask itself)."""

    def forward(self, input, return_type="logits", attention_mask=None):
        return self._run(input, attention_mask, None, return_type)


@pytest.fixture(scope="module")
def mini() -> MiniHooked:
    return MiniHooked()


def _no_hooks_left(model: HookedRootModule) -> bool:
    return all(not hp._forward_hooks for hp in model.hook_dict.values())


def test_capture_on_hooked_root_module_matches_run_with_cache(mini):
    H = capture(mini, PROMPTS, [0, 2], batch_size=2)  # batched, left-padded
    assert H.shape == (3, 2, 32)
    for i, p in enumerate(PROMPTS):  # oracle: TL's own cache, one unpadded prompt at a time
        ids, _ = encode(mini, [p])
        _, cache = mini.run_with_cache(ids)
        torch.testing.assert_close(H[i, 0], cache["blocks.0.hook_resid_post"][0, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(H[i, 1], cache["blocks.2.hook_resid_post"][0, -1], atol=1e-5, rtol=1e-5)
    pre = capture(mini, PROMPTS, [1], hook="resid_pre")
    torch.testing.assert_close(pre[:, 0], capture(mini, PROMPTS, [0])[:, 0])
    assert ModelInfo.of(mini).model_id == "mini-hooked"
    assert _no_hooks_left(mini)


def test_final_logits_on_hooked_root_module(mini):
    logits = final_logits(mini, PROMPTS, batch_size=3)
    for i, p in enumerate(PROMPTS):
        ids, _ = encode(mini, [p])
        with torch.no_grad():
            torch.testing.assert_close(logits[i], mini(ids)[0, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalisation", ["rotate", "unit"])
def test_steering_applied_on_hooked_root_module(mini, normalisation):
    r = torch.randn(32, generator=torch.Generator().manual_seed(1))
    steering = Steering({1: r}, alpha=0.8, normalisation=normalisation)
    plain_logits = final_logits(mini, PROMPTS)
    plain = capture(mini, PROMPTS, [1])[:, 0]
    with steering.applied(mini):
        steered = capture(mini, PROMPTS, [1])[:, 0]
        steered_logits = final_logits(mini, PROMPTS)
    torch.testing.assert_close(steered, edit_residual(plain, r, 0.8, normalisation), atol=1e-5, rtol=1e-5)
    assert (steered_logits - plain_logits).abs().max() > 1e-3
    assert _no_hooks_left(mini)
    assert torch.equal(final_logits(mini, PROMPTS), plain_logits)
    # the steering= argument takes the same path
    torch.testing.assert_close(final_logits(mini, PROMPTS, steering=steering), steered_logits)


def test_tl3_forward_signature_without_position_ids():
    model = MiniHookedTL3Signature()
    reference = MiniHooked()  # same seed, same weights; positions from the mask either way
    torch.testing.assert_close(final_logits(model, PROMPTS), final_logits(reference, PROMPTS))
    torch.testing.assert_close(capture(model, PROMPTS, [2]), capture(reference, PROMPTS, [2]))
