"""Steering: add a (mapped) capability direction to the residual stream at inference.

The paper's edit (``normalisation="rotate"``) turns each hooked state toward the direction
and keeps its norm::

    h <- ||h|| * (h_hat + alpha * r_hat) / ||h_hat + alpha * r_hat||

at every target layer, at the last prompt token, in the prefill pass only
(``positions="last_prompt"``); generated tokens see the edit through the KV cache.
The edits and the position rule are defined once, in :mod:`unlock_lens.interventions`
(``unit``, ``resid``, ``raw``, ``clamp``, and any edit registered there).

Position rules are decided per forward call: a call whose input has more than one position
is a prefill; a one-position call is a decode step once a prefill has been seen inside the
context (``reset()`` starts a new generation). Hooks are attached with the model's own
``hooks()`` context manager, so they are removed on exit, also after an exception
(``KeyboardInterrupt`` included); :func:`attached_hooks` lists what is attached.

Nested ``applied`` contexts compose: the inner context's hooks run after the outer's on the
same hook point, so the edits chain (for the additive ``unit`` / ``raw`` normalisations the
result is the sum of the edits); each context removes only its own hooks on exit, innermost
first. A Steering built with ``target=ModelInfo`` refuses any other model (id, shape or
weight mode), so a key cannot be applied to a model it was not mapped for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from unlock_lens.activations import HookKind, check_layers, hook_name
from unlock_lens.controls import random_like
from unlock_lens.errors import UnlockLensError
from unlock_lens.interventions import (
    EditDtype,
    apply_edit,
    check_edit_dtype,
    check_rule,
    get_edit,
    selects,
)

#: a registered edit name (unlock_lens.interventions.EDITS): rotate, unit, resid, raw, clamp, ...
Normalisation = str
Positions = Literal["last_prompt", "prompt", "final", "all"]


def edit_residual(
    h: Float[Tensor, "... d"],
    direction: Float[Tensor, " d"],
    alpha: float,
    normalisation: Normalisation = "rotate",
) -> Float[Tensor, "... d"]:
    """The steering edit of residual states ``h`` along ``direction`` (pure function).

    ``rotate``: norm-preserving turn toward r (the paper's); ``unit``: h + a r_hat;
    ``resid``: h + a ||h|| r_hat; ``raw``: h + a r; ``clamp``: the component along r_hat
    raised to at least a; any other edit registered in :mod:`unlock_lens.interventions`.
    Computed in float32, returned in h's dtype
    (float16 / bfloat16 states stay in their dtype).

    - ``alpha = 0`` is an exact no-op: a bit-exact copy of ``h`` is returned.
    - ``alpha < 0`` turns *away* from the direction (``rotate``) or subtracts it (the others):
      it removes / suppresses the capability rather than inducing it. With ``rotate`` and
      ``alpha <= -1`` a state parallel to r can be turned to zero (``h_hat + alpha r_hat = 0``);
      the result is then 0, never NaN.
    - A zero state ``h`` stays zero under ``rotate`` (it has no norm to keep).
    - ``direction`` must be a finite 1-D vector of h's width, non-zero unless ``raw``;
      ``alpha`` must be finite. Violations raise :class:`UnlockLensError`. Non-finite ``h``
      propagates (the hook does not inspect states, to avoid a device sync per call;
      :func:`~unlock_lens.activations.capture` refuses non-finite activations).
    """
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise UnlockLensError(f"alpha must be finite, got {alpha}")
    edit = get_edit(normalisation)
    direction = torch.as_tensor(direction)
    if direction.ndim != 1 or h.ndim == 0 or direction.shape[0] != h.shape[-1]:
        raise UnlockLensError(
            f"direction of shape {tuple(direction.shape)} does not fit states of shape "
            f"{tuple(h.shape)}: it must be a 1-D vector of the states' width"
        )
    if not torch.isfinite(direction).all():
        raise UnlockLensError("direction has NaN/inf entries: it must be finite")
    if edit.needs_nonzero_direction and float(direction.float().norm()) == 0.0:
        raise UnlockLensError("direction is zero: it has no direction to steer along")
    if alpha == 0.0:
        return h.clone()
    return apply_edit(h, direction, alpha, normalisation)


def attached_hooks(model: Any) -> dict[str, int]:
    """Hook point name -> number of hooks attached (forward + backward); empty when clean.

    Every public call of unlock_lens leaves a model as it found it; use this to check.
    """
    out: dict[str, int] = {}
    seen: set[int] = set()
    for name, hp in model.hook_dict.items():
        if id(hp) in seen:  # a TransformerBridge lists one hook point under several aliases
            continue
        seen.add(id(hp))
        name = getattr(hp, "name", None) or name
        n = len(hp._forward_hooks) + len(hp._forward_pre_hooks) + len(hp._backward_hooks)
        n += len(getattr(hp, "_backward_pre_hooks", {}))
        if n:
            out[name] = n
    return out


@dataclass
class _CallState:
    """Tracks whether the current forward call is a prefill or a KV-cache decode step."""

    first_layer: int = 0
    seen_prefill: bool = False
    is_prefill: bool = True

    def observe(self, layer: int, seq_len: int) -> bool:
        if layer == self.first_layer:
            self.is_prefill = seq_len > 1 or not self.seen_prefill
            self.seen_prefill = True
        return self.is_prefill


@dataclass
class Steering:
    """Per-layer directions and how to apply them.

    ``directions`` maps a layer index to a ``Float[d_model]`` vector (or is a
    ``Float[n_layers, d_model]`` tensor: one row per layer). ``layers`` restricts which are
    used (default: all given). Use as ``with steering.applied(model): ...``.
    ``target`` (a :class:`~unlock_lens.model_info.ModelInfo`) pins the model the directions
    were mapped into: any other model is refused with ModelMismatchError.

    ``alpha = 0`` attaches nothing (bit-exact unsteered outputs); ``alpha < 0`` turns the
    states away from the direction, i.e. removes the capability (see :func:`edit_residual`).
    ``edit_dtype``: ``float32`` (default) or ``model``, the model's own dtype, as the authors
    (:data:`~unlock_lens.interventions.EditDtype`; the same for a float32 model).
    """

    directions: Mapping[int, Tensor] | Tensor
    alpha: float = 0.1
    normalisation: Normalisation = "rotate"
    positions: Positions = "last_prompt"
    layers: Sequence[int] | None = None
    hook: HookKind = "resid_post"
    target: Any = None
    edit_dtype: EditDtype = "float32"
    _state: _CallState = field(default_factory=_CallState, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.directions, Tensor):
            if self.directions.ndim != 2:
                raise UnlockLensError(
                    f"directions tensor must be [n_layers, d_model], got shape {tuple(self.directions.shape)}"
                )
            self.directions = {i: row for i, row in enumerate(self.directions)}
        else:
            self.directions = {int(k): v for k, v in self.directions.items()}
        if not self.directions:
            raise UnlockLensError("Steering needs at least one layer direction")
        edit = get_edit(self.normalisation)
        check_rule(self.positions)
        check_edit_dtype(self.edit_dtype)
        if not torch.isfinite(torch.tensor(float(self.alpha))):
            raise UnlockLensError(f"alpha must be finite, got {self.alpha}")
        for layer, v in self.directions.items():
            if v.ndim != 1 or not torch.isfinite(v).all():
                raise UnlockLensError(f"direction for layer {layer} must be a finite 1-D vector")
            if edit.needs_nonzero_direction and float(v.norm()) == 0.0:
                raise UnlockLensError(f"direction for layer {layer} is zero: it has no direction")

    @property
    def active_layers(self) -> list[int]:
        layers = sorted(self.directions) if self.layers is None else sorted(self.layers)
        missing = [layer for layer in layers if layer not in self.directions]
        if missing:
            raise UnlockLensError(f"no direction given for layers {missing}")
        return layers

    def reset(self) -> None:
        """Mark the next forward call as a fresh prefill (call before each generation)."""
        self._state.seen_prefill = False

    def _hook(self, layer: int):
        state, alpha, norm, rule = self._state, self.alpha, self.normalisation, self.positions
        edit_dtype = self.edit_dtype
        cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        where: dict[tuple[int, bool], slice | Tensor] = {}  # (length, prefill) -> positions to edit
        direction = self.directions[layer]

        def steer_hook(x: Tensor, hook: Any) -> Tensor:
            n = x.shape[1]
            prefill = state.observe(layer, n)
            key = (x.device, x.dtype)
            if key not in cache:  # once per device/dtype, not per call
                cache[key] = direction.to(device=x.device, dtype=torch.float32)
            if (n, prefill) not in where:  # decided on the host once: no device sync per call
                # left-padded prefill: the last prompt token is position n - 1 of every row;
                # a decode step's tokens all come after the prompt
                picked = selects(rule, torch.arange(n), n - 1 if prefill else -1).nonzero().flatten()
                contiguous = len(picked) == 0 or int(picked[-1] - picked[0]) == len(picked) - 1
                where[(n, prefill)] = (slice(int(picked[0]), int(picked[-1]) + 1) if len(picked)
                                       else slice(0, 0)) if contiguous else picked
            at = where[(n, prefill)]
            if isinstance(at, slice) and at == slice(0, n):
                return apply_edit(x, cache[key], alpha, norm, edit_dtype)
            if isinstance(at, slice) and at.start == at.stop:
                return x
            x = x.clone()
            if isinstance(at, Tensor):
                at = at.to(x.device)
            x[:, at] = apply_edit(x[:, at], cache[key], alpha, norm, edit_dtype)
            return x

        return steer_hook

    def fwd_hooks(self, model: Any) -> list[tuple[str, Any]]:
        if self.target is not None:
            self.target.check(model, "this Steering", strict_id=True)
        layers = self.active_layers
        check_layers(model, layers)
        d_model = int(model.cfg.d_model)
        for layer in layers:
            if self.directions[layer].shape[-1] != d_model:
                raise UnlockLensError(
                    f"direction for layer {layer} has size {self.directions[layer].shape[-1]} but "
                    f"the model's d_model is {d_model}: map the key into this model's space first"
                )
        self._state.first_layer = layers[0]
        return [(hook_name(layer, self.hook), self._hook(layer)) for layer in layers]

    @contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        """Attach the steering hooks for the duration of the block; always removed after."""
        hooks = self.fwd_hooks(model)
        self.reset()
        if self.alpha == 0:  # exact no-op: attach nothing
            yield model
            return
        with model.hooks(fwd_hooks=hooks):
            yield model

    def randomized(self, seed: int) -> Steering:
        """The random-direction control: a copy whose directions are isotropic random vectors
        with the same per-layer norms (:func:`~unlock_lens.controls.random_like`, seeded)."""
        return Steering(
            random_like(self.directions, seed), self.alpha, self.normalisation, self.positions,
            self.layers, self.hook, self.target, self.edit_dtype,
        )

    def like(self, directions: Mapping[int, Tensor] | Tensor, alpha: float | None = None) -> Steering:
        """Other directions steered the same way (edit, positions, hook, precision; this alpha
        unless given), pinned to no model: a control or a null beside this steering."""
        return Steering(directions, self.alpha if alpha is None else alpha, self.normalisation,
                        self.positions, None, self.hook, None, self.edit_dtype)

    def scaled(self, alpha: float) -> Steering:
        """A copy with another alpha."""
        return Steering(
            dict(self.directions), alpha, self.normalisation, self.positions, self.layers, self.hook,
            self.target, self.edit_dtype,
        )
