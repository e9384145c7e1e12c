"""Run any lm-evaluation-harness task on a steered TransformerLens bridge.

    from lm_eval import simple_evaluate
    from unlock_lens.lm_eval_adapter import SteeredHFLM

    lm = SteeredHFLM(bridge, pack=CapabilityPack.load("pack.safetensors"), batch_size=16)
    simple_evaluate(model=lm, tasks=["gsm8k"])

or from the shell (registers the model name ``unlock-lens``, then runs lm-eval's own CLI)::

    python -m unlock_lens.lm_eval_adapter --model unlock-lens \
        --model_args pretrained=Qwen/Qwen1.5-7B,pack=pack.safetensors,alpha=0.1 --tasks gsm8k

How it works: ``SteeredHFLM`` is lm-eval's ``HFLM`` on ``bridge.original_model``. A raw
TransformerBridge wraps the HF decoder layers in place, so the bridge's hook points
(``blocks.{l}.hook_resid_post``) fire when lm-eval calls the HF model, and the steering edit
is exactly the library's (:func:`unlock_lens.steer.edit_residual`).

Positions keep their generation meaning in both request types:

- ``generate_until``: the library's :class:`Steering` hooks, unchanged (lm-eval left-pads, so
  the last position of the prefill is the last prompt token; decode steps use the KV cache).
- ``loglikelihood``: lm-eval scores ``context + continuation`` in one right-padded forward.
  The edit goes where generation would put it: ``last_prompt`` = the last *context* token of
  each row, ``prompt`` = all context tokens, ``final`` = the last context token and the
  continuation tokens (the ones a generation would decode), ``all`` = every token
  (:func:`unlock_lens.interventions.selects`, the rule every engine uses). This equals prefilling the context with the
  edit and scoring the continuation through the KV cache.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from unlock_lens.activations import hook_name
from unlock_lens.errors import UnlockLensError
from unlock_lens.interventions import selects
from unlock_lens.model_info import weight_mode
from unlock_lens.steer import Steering, edit_residual

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "unlock_lens.lm_eval_adapter needs lm-evaluation-harness: pip install 'lm-eval>=0.4.9'"
    ) from err

MODEL_NAME = "unlock-lens"
Request = tuple[tuple[str, str], list[int], list[int]]


def _resolve_steering(
    bridge: Any, pack: Any, steering: Steering | None, alpha: float | None
) -> Steering | None:
    if pack is not None and steering is not None:
        raise UnlockLensError("pass either pack= or steering=, not both")
    if pack is not None:
        from unlock_lens.pack import CapabilityPack

        pack = CapabilityPack.load(pack) if not isinstance(pack, CapabilityPack) else pack
        pack.check_model(bridge)
        steering = pack.steering(None if alpha is None else float(alpha))
    elif steering is not None and alpha is not None:
        steering = steering.scaled(float(alpha))
    if steering is not None:
        steering.fwd_hooks(bridge)  # validates layers and widths against this model now
    return steering


@register_model(MODEL_NAME)
class SteeredHFLM(HFLM):
    """lm-eval's ``HFLM`` on a TransformerBridge's HF model, steered by a pack or a Steering.

    ``pretrained``: a raw-mode ``TransformerBridge`` or a name/path for
    :func:`unlock_lens.models.load_model`. ``pack``: a :class:`CapabilityPack` or its file;
    or ``steering``: a :class:`Steering`. ``alpha`` overrides either's alpha. Neither given:
    the unsteered model (a baseline through the same code path). Other keyword arguments go
    to ``HFLM`` (``batch_size``, ``max_length``, ``add_bos_token``, ...).
    """

    def __init__(
        self,
        pretrained: Any,
        pack: Any = None,
        steering: Steering | None = None,
        alpha: float | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(pretrained, str):
            from unlock_lens.models import load_model

            pretrained = load_model(pretrained, device=device or "cpu")
        hf_model = getattr(pretrained, "original_model", None)
        if hf_model is None or not hasattr(pretrained, "hooks"):
            raise UnlockLensError(
                f"SteeredHFLM needs a TransformerBridge (got {type(pretrained).__name__}); load "
                "one with unlock_lens.load_model"
            )
        if weight_mode(pretrained) != "raw":
            raise UnlockLensError(
                "SteeredHFLM runs the bridge's HF model directly, which matches the bridge only "
                "in raw mode; load the bridge without compatibility mode"
            )
        self.bridge = pretrained
        self.steering = _resolve_steering(pretrained, pack, steering, alpha)
        self._edit_at: dict[tuple[int, ...], int] = {}
        super().__init__(pretrained=hf_model, tokenizer=pretrained.tokenizer, **kwargs)

    @property
    def _active(self) -> bool:
        return self.steering is not None and self.steering.alpha != 0

    # ---- loglikelihood: per-row edit positions -----------------------------------------

    def _loglikelihood_tokens(self, requests: list[Request], *args: Any, **kwargs: Any):
        if self._active:
            self._register_rows(requests)
        try:
            return super()._loglikelihood_tokens(requests, *args, **kwargs)
        finally:
            self._edit_at.clear()

    def _register_rows(self, requests: Sequence[Request]) -> None:
        """Map each model input (as lm-eval builds it) to the index of its last context token."""
        for _, context_enc, continuation_enc in requests:
            inp = tuple((list(context_enc) + list(continuation_enc))[-(self.max_length + 1):][:-1])
            last_ctx = len(inp) - len(continuation_enc)
            if self._edit_at.setdefault(inp, last_ctx) != last_ctx:
                raise UnlockLensError(
                    "two loglikelihood requests give the same model input with different "
                    "context/continuation splits, so the last prompt token is ambiguous; use "
                    "positions='all' or evaluate them in separate runs"
                )

    def _locate(self, row: list[int], lengths: list[int]) -> tuple[int, int] | None:
        """(unpadded length, last context index) of one right-padded row, if registered."""
        for n in lengths:
            key = tuple(row[:n])
            if key in self._edit_at and not any(row[n:]):
                return n, self._edit_at[key]
        return None

    def _row_mask(self, inps: Tensor) -> Bool[Tensor, "b pos"] | None:
        """Positions to edit in a right-padded loglikelihood batch (None: not a scoring batch)."""
        positions = self.steering.positions
        mask = torch.zeros(inps.shape, dtype=torch.bool, device=inps.device)
        if positions == "all":  # padding too: the rule needs no row layout
            return mask.fill_(True)
        lengths = sorted({len(k) for k in self._edit_at if len(k) <= inps.shape[1]}, reverse=True)
        rows = [self._locate(row, lengths) for row in inps.tolist()]
        if all(r is None for r in rows):
            return None  # not a scoring batch (lm-eval's batch-size probe): no row to place
        for b, found in enumerate(rows):
            if found is None:
                raise UnlockLensError(
                    "cannot locate the context of a loglikelihood row: this lm-eval version "
                    "builds inputs differently; use positions='all'"
                )
            n, last_ctx = found
            pos = torch.arange(n, device=inps.device)
            mask[b, :n] = selects(positions, pos, last_ctx)
        return mask

    def _masked_hooks(self, mask: Bool[Tensor, "b pos"]) -> list[tuple[str, Any]]:
        s = self.steering
        assert s is not None

        def make(direction: Tensor):
            def hook(x: Tensor, hook: Any) -> Tensor:
                r = direction.to(device=x.device, dtype=torch.float32)
                m = mask.to(x.device)
                out = x.clone()
                out[m] = edit_residual(x[m], r, s.alpha, s.normalisation)
                return out

            return hook

        return [(hook_name(layer, s.hook), make(s.directions[layer])) for layer in s.active_layers]

    def _model_call(self, inps: Tensor, attn_mask: Tensor | None = None, labels: Tensor | None = None):
        if not self._active:
            return super()._model_call(inps, attn_mask, labels)
        mask = self._row_mask(inps) if self._edit_at else None
        if mask is None:  # a call outside loglikelihood scoring (e.g. batch-size probing)
            with self.steering.applied(self.bridge):
                return super()._model_call(inps, attn_mask, labels)
        with self.bridge.hooks(fwd_hooks=self._masked_hooks(mask)):
            return super()._model_call(inps, attn_mask, labels)

    # ---- generate_until: the library's own Steering hooks -----------------------------

    def _model_generate(self, context: Tensor, max_length: int, stop: list[str], **kwargs: Any):
        if not self._active:
            return super()._model_generate(context, max_length, stop, **kwargs)
        with self.steering.applied(self.bridge):  # applied() resets: this call is a prefill
            return super()._model_generate(context, max_length, stop, **kwargs)


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's CLI with the ``unlock-lens`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


__all__ = ["MODEL_NAME", "SteeredHFLM", "main"]

if __name__ == "__main__":
    main()
