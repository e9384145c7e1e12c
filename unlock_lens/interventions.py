"""Interventions as operators: the steering edits and the position rule, defined once.

Every engine (the torch hooks in :mod:`unlock_lens.steer`, the exports, the vLLM backend, the
lm-eval adapter) asks this module what an edit does and which positions it touches, so a new
edit is one :func:`register_edit` call plus its test.

An :class:`Edit` maps states ``h [..., d]`` and a direction ``r [d]`` to new states, computed
in float32 (``edit_dtype="float32"``, the library's default: a bf16 model's state and the
small turn toward r are not rounded to bf16 mid-formula) or in the states' own dtype
(``"model"``: the authors' code, which casts the direction with ``type_as`` and edits in bf16).
``additive`` says whether it is ``h + v`` for a fixed ``v`` (then ``vector(r, alpha)`` gives
``v``): only those run exactly on engines that add constant vectors (llama.cpp control
vectors, TransformerLens-vLLM specs). ``norm_scaled`` edits (``rotate``, ``resid``) have a
documented additive approximation that needs the mean residual norm (:mod:`unlock_lens.export`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from unlock_lens.errors import UnlockLensError

EditFn = Callable[[Tensor, Tensor, float], Tensor]
#: the dtype an edit is computed in: ``float32`` or ``model`` (the states' own dtype)
EditDtype = Literal["float32", "model"]


def _unit(r: Tensor) -> Tensor:
    return r / r.norm().clamp_min(1e-12)


@dataclass(frozen=True)
class Edit:
    """One steering edit. ``fn(h, r, alpha)`` works on states ``[..., d]`` in the dtype
    :func:`apply_edit` hands it (h and r alike)."""

    name: str
    fn: EditFn
    additive: bool = False
    norm_scaled: bool = False
    needs_nonzero_direction: bool = True
    doc: str = ""

    def vector(self, r: Tensor, alpha: float, norm: float | None = None) -> Tensor:
        """The constant vector an additive engine adds for this edit.

        Exact for additive edits; for ``norm_scaled`` ones the first-order approximation at a
        state of norm ``norm`` (required). Other edits have no additive form and are refused.
        """
        r = r.float()
        if self.additive:
            return self.fn(torch.zeros_like(r), r, alpha)
        if self.norm_scaled:
            if norm is None:
                raise UnlockLensError(
                    f"normalisation {self.name!r} scales the step by ||h||, which an additive vector "
                    "cannot follow: pass the mean residual norm of each layer (measure_resid_norms)"
                )
            return alpha * float(norm) * _unit(r)
        raise UnlockLensError(
            f"normalisation {self.name!r} has no additive form: engines that add constant vectors "
            "(llama.cpp control vectors, vLLM specs) cannot apply it; use the torch path "
            "(Steering.applied) or the vLLM hook engine"
        )


EDITS: dict[str, Edit] = {}


def register_edit(edit: Edit) -> Edit:
    """Add an edit to the registry (a name may be registered once)."""
    if edit.name in EDITS:
        raise UnlockLensError(f"an edit named {edit.name!r} is already registered")
    EDITS[edit.name] = edit
    return edit


def get_edit(name: str) -> Edit:
    """The registered edit ``name``; a clear error listing the known ones otherwise."""
    try:
        return EDITS[name]
    except KeyError:
        raise UnlockLensError(
            f"unknown normalisation {name!r}; choose one of {tuple(EDITS)}"
        ) from None


def _rotate(h: Tensor, r: Tensor, alpha: float) -> Tensor:
    norm = h.norm(dim=-1, keepdim=True)
    turned = h / norm.clamp_min(1e-12) + alpha * _unit(r)
    return norm * turned / turned.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _clamp_projection(h: Tensor, r: Tensor, alpha: float) -> Tensor:
    r_hat = _unit(r)
    coefficient = h @ r_hat
    target = torch.clamp(coefficient, min=alpha)
    return h + (target - coefficient).unsqueeze(-1) * r_hat


register_edit(Edit(
    "rotate", _rotate, norm_scaled=True,
    doc="||h|| (h_hat + a r_hat) / ||h_hat + a r_hat||: turn toward r, keep the norm (the paper's)",
))
register_edit(Edit("unit", lambda h, r, a: h + a * _unit(r), additive=True, doc="h + a r_hat"))
register_edit(Edit(
    "resid", lambda h, r, a: h + a * h.norm(dim=-1, keepdim=True) * _unit(r), norm_scaled=True,
    doc="h + a ||h|| r_hat",
))
register_edit(Edit("raw", lambda h, r, a: h + a * r, additive=True, needs_nonzero_direction=False,
                   doc="h + a r"))
register_edit(Edit(
    "clamp", _clamp_projection,
    doc="raise the component along r_hat to at least a (h . r_hat >= a), leave the rest of h",
))


def check_edit_dtype(edit_dtype: str) -> str:
    if edit_dtype not in get_args(EditDtype):
        raise UnlockLensError(f"unknown edit_dtype {edit_dtype!r}; choose one of {get_args(EditDtype)}")
    return edit_dtype


def apply_edit(h: Tensor, r: Tensor, alpha: float, name: str, edit_dtype: EditDtype = "float32") -> Tensor:
    """``get_edit(name)`` on ``h``, computed in float32 or (``edit_dtype="model"``) in ``h``'s
    dtype, returned in ``h``'s dtype (no input checks)."""
    dtype = torch.float32 if edit_dtype == "float32" else h.dtype
    out = get_edit(name).fn(h.to(dtype), r.to(device=h.device, dtype=dtype), alpha)
    return out.to(h.dtype)


# ---- the position rule --------------------------------------------------------------------

POSITION_RULES: tuple[str, ...] = ("last_prompt", "prompt", "final", "all")


def check_rule(rule: str) -> str:
    if rule not in POSITION_RULES:
        raise UnlockLensError(f"unknown positions {rule!r}; choose one of {POSITION_RULES}")
    return rule


def selects(rule: str, pos: Tensor, last_prompt: int | Tensor) -> Tensor:
    """Which tokens ``rule`` edits: ``pos`` are absolute sequence positions, ``last_prompt`` the
    position of the last prompt token (elementwise, broadcast).

    ``last_prompt``: that token only (in the prefill; generated tokens see it through the KV
    cache); ``prompt``: every prompt token; ``final``: the last prompt token and every
    generated token; ``all``: every token.
    """
    last = torch.as_tensor(last_prompt, device=pos.device)
    if rule == "all":
        return torch.ones_like(pos, dtype=torch.bool)
    if rule == "last_prompt":
        return pos == last
    if rule == "prompt":
        return pos <= last
    if rule == "final":
        return pos >= last
    raise UnlockLensError(f"unknown positions {rule!r}; choose one of {POSITION_RULES}")
