"""A planted-rotation pair: a Llama whose residual basis is turned by a known orthogonal R.

Every residual state of the copy is the original's times R, exactly (up to float32): the
RMSNorm weights are folded into the matrices that read the normalised stream first, since
x / rms(x) commutes with R but an elementwise weight does not. A key carried from the
original into the copy by a perfect map is the copy's own key: the ground truth for F = 1.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unlock_lens.errors import UnlockLensError

_READS = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight")
_WRITES = ("o_proj.weight", "down_proj.weight")


def rotated_copy(src_dir: str | Path, out_dir: str | Path, *, seed: int = 0) -> torch.Tensor:
    """Save the Llama at ``src_dir`` with its residual basis turned by a seeded random
    orthogonal ``R`` (d x d) to ``out_dir`` (weights and tokenizer); returns ``R``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src_dir, dtype=torch.float32)
    if model.config.model_type != "llama":
        raise UnlockLensError(f"rotated_copy folds Llama's RMSNorms; got a {model.config.model_type!r} "
                              "model: use a Llama (e.g. the chain-s organism)")
    d = model.config.hidden_size
    gen = torch.Generator().manual_seed(int(seed))
    R = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0].float()
    lm_head = model.lm_head.weight.detach().clone()
    model.config.tie_word_embeddings = False
    with torch.no_grad():
        for layer in model.model.layers:
            for norm, readers in ((layer.input_layernorm, (layer.self_attn.q_proj, layer.self_attn.k_proj,
                                                           layer.self_attn.v_proj)),
                                  (layer.post_attention_layernorm, (layer.mlp.gate_proj, layer.mlp.up_proj))):
                for lin in readers:
                    lin.weight.mul_(norm.weight)
                norm.weight.fill_(1.0)
        model.lm_head.weight = torch.nn.Parameter(lm_head * model.model.norm.weight)
        model.model.norm.weight.fill_(1.0)
        for name, p in model.named_parameters():
            if "norm" in name:
                continue
            if name.endswith(("embed_tokens.weight", "lm_head.weight", *_READS)):
                p.copy_(p @ R)          # reads the residual stream
            elif name.endswith(_WRITES):
                p.copy_(R.T @ p)        # writes to it
            else:
                raise UnlockLensError(f"rotated_copy does not know how to turn parameter {name!r}")
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(src_dir).save_pretrained(out_dir)
    return R
