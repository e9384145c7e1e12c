"""Steered batched generation on vLLM (optional extra ``unlock-lens[vllm]``; needs a GPU).

Two engines, chosen per :class:`~unlock_lens.steer.Steering` by :func:`plan_steering`:

- ``"affine"``: TransformerLens's ``RemoteBridge.boot_vllm`` add-interventions
  (``{"op": "add", "value": ...}`` on ``blocks.{l}.hook_out``, vLLM's name for
  ``hook_resid_post``). Exact for a constant edit at every token: ``normalisation`` ``raw``
  (``h + alpha r``) or ``unit`` (``h + alpha r_hat``) with ``positions="all"``. Runs compiled
  (CUDA graphs), the fast path.
- ``"hook"``: a worker-side forward hook on each decoder layer (installed over
  ``collective_rpc``) that applies :func:`unlock_lens.steer.edit_residual` to the rows picked
  by :func:`rows_to_edit` from vLLM's per-request layout. Needed for the paper's default
  (``rotate`` at the last prompt token, prefill only), ``resid``, and the ``last_prompt`` /
  ``prompt`` / ``final`` position rules. Runs eager (``enforce_eager=True``) with prefix
  caching off, so the edit is never skipped by a cache hit.

:func:`generate_on_vllm` gives :func:`unlock_lens.generation.generate`'s contract (same prompt
token ids, same EOS / stop-string cut and token count) so the evaluation runner can use vLLM
through ``Decoding(engine="vllm")`` (``unlock-lens eval --backend vllm``).

Everything a backend cannot do exactly is refused with :class:`UnlockLensError` naming the
alternative, never approximated: TransformerLens's ``pos`` key is not used (it indexes the
flattened token batch in compiled mode and is ignored in batched mode), and ``resid_pre`` at
layer 0 is not reachable. ``vllm`` is imported lazily; the planning functions are pure and
tested on CPU (``tests/test_vllm_spec.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from unlock_lens.errors import UnlockLensError
from unlock_lens.interventions import POSITION_RULES, check_rule, get_edit, selects

Engine = Literal["auto", "affine", "hook"]
HOOK_POSITIONS = POSITION_RULES


@dataclass(frozen=True)
class LayerEdit:
    """One steered decoder layer on vLLM: ``model.layers.{layer}`` output, ``direction`` fp32."""

    layer: int
    direction: tuple[float, ...]


@dataclass(frozen=True)
class VLLMPlan:
    """A :class:`Steering` translated for vLLM: the engine and what it sends to the workers.

    ``affine_specs`` (engine ``affine``): ``{hook_name: {"op": "add", "value": [...]}}`` for
    ``RemoteBridge``/``tl_set_interventions``. ``edits`` (engine ``hook``): per-layer
    directions for :func:`install_worker_hooks`, with ``alpha``/``normalisation``/``positions``.
    """

    engine: Literal["affine", "hook"]
    alpha: float
    normalisation: str
    positions: str
    affine_specs: dict[str, dict[str, Any]]
    edits: tuple[LayerEdit, ...]

    def worker_payload(self) -> dict[str, Any]:
        """Plain-Python form for ``collective_rpc`` (msgpack/pickle safe: no tensors)."""
        return {
            "alpha": self.alpha,
            "normalisation": self.normalisation,
            "positions": self.positions,
            "edits": [[e.layer, list(e.direction)] for e in self.edits],
        }


def _vllm_layer(layer: int, hook: str) -> int:
    """The vLLM decoder layer whose output is ``blocks.{layer}.hook_{hook}``."""
    if hook == "resid_post":
        return layer
    if hook == "resid_pre":
        if layer == 0:
            raise UnlockLensError(
                "resid_pre at layer 0 (the scaled embedding) is not reachable on vLLM: steer "
                "resid_post layers instead, or use the torch path (unlock_lens.generation)"
            )
        return layer - 1  # block l's input is block l-1's output
    raise UnlockLensError(f"unknown hook kind {hook!r}; use 'resid_post' or 'resid_pre'")


def plan_steering(
    steering: Any, *, n_layers: int, d_model: int, engine: Engine = "auto"
) -> VLLMPlan:
    """Translate a :class:`~unlock_lens.steer.Steering` for vLLM, or refuse it.

    ``engine="auto"`` picks ``affine`` when the edit is a constant add at every token
    (``raw``/``unit`` with ``positions="all"``), else ``hook``. Asking for ``affine`` with an
    edit it cannot express exactly raises :class:`UnlockLensError` naming the alternative.
    """
    if engine not in ("auto", "affine", "hook"):
        raise UnlockLensError(f"unknown vLLM engine {engine!r}; use 'auto', 'affine' or 'hook'")
    norm, positions, alpha = steering.normalisation, steering.positions, float(steering.alpha)
    edit = get_edit(norm)  # the hook engine runs every registered edit; affine only additive ones
    check_rule(positions)
    affine_ok = edit.additive and positions == "all"
    if engine == "affine" and not affine_ok:
        why = []
        if not edit.additive:
            why.append(
                f"normalisation={norm!r} depends on each state h (not a constant add); "
                "TransformerLens's vLLM interventions are h*scale + bias only"
            )
        if positions != "all":
            why.append(
                f"positions={positions!r} needs per-request positions; TransformerLens's 'pos' "
                "indexes the flattened token batch (compiled) or is ignored (batched mode)"
            )
        raise UnlockLensError(
            "the vLLM 'affine' engine cannot apply this steering exactly: " + "; ".join(why)
            + ". Use engine='hook' (worker-side hook, eager) or normalisation='raw'/'unit' with "
            "positions='all'."
        )
    chosen: Literal["affine", "hook"] = "affine" if (engine == "affine" or (engine == "auto" and affine_ok)) else "hook"

    layers = steering.active_layers
    edits, specs = [], {}
    for layer in layers:
        if not -n_layers <= layer < n_layers:
            raise UnlockLensError(
                f"layer {layer} is out of range for a model with {n_layers} layers"
            )
        r = steering.directions[layer].detach().to("cpu", torch.float32)
        if r.shape != (d_model,):
            raise UnlockLensError(
                f"direction for layer {layer} has shape {tuple(r.shape)}, the model's d_model "
                f"is {d_model}: map the key into this model's space first"
            )
        target = _vllm_layer(layer % n_layers, steering.hook)
        if chosen == "affine":
            vec = edit.vector(r, alpha)
            specs[f"blocks.{target}.hook_out"] = {"op": "add", "value": vec.tolist()}
        edits.append(LayerEdit(target, tuple(r.tolist())))
    return VLLMPlan(chosen, alpha, norm, positions, specs, tuple(edits))


def rows_to_edit(
    offsets: Sequence[int],
    computed: Sequence[int],
    prompt_lens: Sequence[int],
    positions: str,
) -> list[int]:
    """Rows of one vLLM forward (all requests' tokens, flattened) that the edit applies to.

    Request ``i`` owns rows ``offsets[i]:offsets[i+1]``, which hold its sequence positions
    ``computed[i] ..`` (tokens already in its KV cache before this forward; chunked prefill
    and decode both fit). ``prompt_lens[i]`` is its prompt length. Rules (same as the torch
    path): ``last_prompt`` -> position ``P-1`` only; ``prompt`` -> positions ``< P``;
    ``final`` -> positions ``>= P-1`` (last prompt token, then every generated token fed
    back); ``all`` -> every row.
    """
    check_rule(positions)
    rows: list[int] = []
    for i in range(len(offsets) - 1):
        start, end = int(offsets[i]), int(offsets[i + 1])
        pos = torch.arange(end - start) + int(computed[i])
        picked = selects(positions, pos, int(prompt_lens[i]) - 1).nonzero().flatten()
        rows += (picked + start).tolist()
    return rows


def apply_rows(
    hidden: Tensor, residual: Tensor | None, rows: Sequence[int], direction: Tensor,
    alpha: float, normalisation: str,
) -> tuple[Tensor, Tensor | None]:
    """Edit ``hidden + residual`` (vLLM's fused residual stream) at ``rows``; exact.

    Edited rows carry the full new state in ``hidden`` and zero in ``residual``, so the next
    fused add-norm sees exactly the edited state (no ``new - residual`` rounding).
    """
    from unlock_lens.steer import edit_residual

    if not rows:
        return hidden, residual
    idx = torch.as_tensor(list(rows), device=hidden.device)
    state = hidden[idx] if residual is None else hidden[idx] + residual[idx]
    hidden = hidden.clone()
    hidden[idx] = edit_residual(state, direction, alpha, normalisation)  # type: ignore[arg-type]
    if residual is not None:
        residual = residual.clone()
        residual[idx] = 0
    return hidden, residual


# ---- worker side (runs inside vLLM worker processes via collective_rpc) -------------------


def _batch_layout(model_runner: Any) -> tuple[list[int], list[int], list[int]]:
    """``(offsets, computed, prompt_lens)`` of the current forward (vLLM v1 internals)."""
    from transformer_lens.model_bridge.sources.vllm.internals import segment_by_request

    qsl, req_ids = segment_by_request(model_runner)
    if qsl is None:
        raise RuntimeError("vLLM gave no per-request token offsets: cannot place the edit")
    batch = model_runner.input_batch
    n = len(req_ids)
    computed = [int(c) for c in batch.num_computed_tokens_cpu[:n]]
    prompt_lens = [int(p) for p in batch.num_prompt_tokens[:n]]
    return [int(o) for o in qsl[: n + 1]], computed, prompt_lens


#: where vLLM model classes keep their decoder layers (first match wins)
DECODER_LAYER_PATHS = ("model.layers", "model.language_model.layers", "language_model.model.layers",
                       "transformer.h", "model.decoder.layers")


def decoder_layers(model: Any) -> Sequence[Any]:
    """The model's decoder layers, found through the model rather than assumed at one path."""
    for path in DECODER_LAYER_PATHS:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return obj
    raise UnlockLensError(
        f"cannot find the decoder layers of {type(model).__name__} (tried {DECODER_LAYER_PATHS}): "
        "add its path to unlock_lens.backends.vllm.DECODER_LAYER_PATHS"
    )


def install_worker_hooks(worker: Any, payload: dict[str, Any]) -> list[int]:
    """``collective_rpc`` target: hook each steered decoder layer; returns the layers hooked
    (a pipeline stage hooks only the layers it holds)."""
    remove_worker_hooks(worker)
    runner = worker.model_runner
    model = runner.model
    alpha, norm, positions = payload["alpha"], payload["normalisation"], payload["positions"]
    state: dict[str, Any] = {}
    device = next(model.parameters()).device
    layers = decoder_layers(model)
    here = [  # layers on this rank (another pipeline stage owns the rest)
        (layer, layers[layer], torch.tensor(direction, dtype=torch.float32, device=device))
        for layer, direction in payload["edits"]
        if layer < len(layers) and type(layers[layer]).__name__ != "PPMissingLayer"
    ]
    if not here:
        worker._unlock_lens_handles = []
        return []
    first_layer = min(layer for layer, _, _ in here)
    handles = []
    for layer, module, r in here:

        def hook(_module, _inputs, output, layer=layer, r=r):
            if layer == first_layer or "rows" not in state:  # layout once per forward
                offsets, computed, prompt_lens = _batch_layout(runner)
                state["rows"] = rows_to_edit(offsets, computed, prompt_lens, positions)
            if isinstance(output, tuple) and len(output) == 2:
                return apply_rows(output[0], output[1], state["rows"], r, alpha, norm)
            return apply_rows(output, None, state["rows"], r, alpha, norm)[0]

        handles.append(module.register_forward_hook(hook))
    worker._unlock_lens_handles = handles
    return [layer for layer, _, _ in here]


def check_hooked(plan: VLLMPlan, hooked: Sequence[Sequence[int]]) -> None:
    """Refuse to generate when the workers hooked other layers than the plan steers: a model
    that runs unsteered must never be reported as steered."""
    want = {edit.layer for edit in plan.edits}
    got = {layer for worker in hooked for layer in worker}
    if got != want:
        raise UnlockLensError(
            f"the vLLM workers hooked decoder layers {sorted(got)} but the steering needs "
            f"{sorted(want)}: this model's layers are not where unlock_lens looks "
            "(DECODER_LAYER_PATHS); the run would not be steered as asked"
        )


def remove_worker_hooks(worker: Any) -> int:
    """``collective_rpc`` target: remove this library's hooks; returns how many."""
    handles = getattr(worker, "_unlock_lens_handles", [])
    for h in handles:
        h.remove()
    worker._unlock_lens_handles = []
    return len(handles)


# ---- driver side ---------------------------------------------------------------------------


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as err:
        raise UnlockLensError(
            "vLLM is not installed: `pip install 'unlock-lens[vllm]'` (needs a CUDA GPU), or "
            "use the torch path (unlock_lens.generation.generate)"
        ) from err
    return vllm


class VLLMSteeredGenerator:
    """Greedy batched steered generation on vLLM.

    ``engine="affine"`` boots through ``RemoteBridge.boot_vllm`` (compiled; interventions via
    the TransformerLens worker extension); ``engine="hook"`` boots a plain eager ``vllm.LLM``
    with prefix caching off and installs :func:`install_worker_hooks`. Both honour
    ``tensor_parallel_size`` (decoder-layer outputs are replicated after the all-reduce, so
    every rank applies the same edit). Use as a context manager to free the GPU.
    """

    def __init__(
        self,
        model: str,
        *,
        engine: Literal["affine", "hook"] = "hook",
        tensor_parallel_size: int = 1,
        dtype: str | torch.dtype = "float32",
        max_model_len: int = 2048,
        gpu_memory_utilization: float = 0.5,
        **vllm_kwargs: Any,
    ) -> None:
        if engine not in ("affine", "hook"):
            raise UnlockLensError(f"engine must be 'affine' or 'hook', got {engine!r}")
        vllm = _import_vllm()
        self.engine = engine
        self.bridge = None
        if engine == "affine":
            from transformer_lens.model_bridge.remote_bridge import RemoteBridge

            torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
            self.bridge = RemoteBridge.boot_vllm(
                model, dtype=torch_dtype, max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                tensor_parallel_size=tensor_parallel_size, **vllm_kwargs,
            )
            self.llm = self.bridge._driver._llm  # TL's driver forward is single-token only
        else:
            self.llm = vllm.LLM(
                model=model, tensor_parallel_size=tensor_parallel_size,
                dtype=dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch."),
                max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=True, enable_prefix_caching=False, **vllm_kwargs,
            )
        cfg = self.llm.llm_engine.model_config.hf_config
        self.n_layers = int(cfg.num_hidden_layers)
        self.d_model = int(cfg.hidden_size)
        self.tokenizer = self.llm.get_tokenizer()

    def _apply(self, plan: VLLMPlan | None) -> None:
        if self.engine == "affine":
            specs = plan.affine_specs if plan is not None else {}
            self.llm.collective_rpc("tl_set_interventions", args=(specs,))
        else:
            self.llm.collective_rpc(remove_worker_hooks)
            if plan is not None:
                hooked = self.llm.collective_rpc(install_worker_hooks, args=(plan.worker_payload(),))
                check_hooked(plan, hooked)

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        *,
        steering: Any = None,
        max_new_tokens: int = 128,
        stop_strings: Sequence[str] = (),
    ) -> list[list[int]]:
        """Greedy completion token ids for each prompt (ids as the torch path encodes them)."""
        vllm = _import_vllm()
        plan = None
        if steering is not None and steering.alpha != 0:
            plan = plan_steering(steering, n_layers=self.n_layers, d_model=self.d_model,
                                 engine=self.engine)
        params = vllm.SamplingParams(temperature=0.0, max_tokens=int(max_new_tokens),
                                     stop=list(stop_strings) or None)
        self._apply(plan)
        try:
            outs = self.llm.generate(
                [{"prompt_token_ids": list(map(int, p))} for p in prompt_token_ids],
                sampling_params=params, use_tqdm=False,
            )
        finally:
            self._apply(None)
        return [list(o.outputs[0].token_ids) for o in outs]

    def close(self) -> None:
        if getattr(self, "bridge", None) is not None:
            self.bridge.close()
        self.llm = None  # type: ignore[assignment]

    def __enter__(self) -> VLLMSteeredGenerator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def generate_on_vllm(
    generator: Any,
    model: Any,
    prompts: Sequence[str],
    *,
    steering: Any = None,
    max_new_tokens: int = 128,
    stop_strings: Sequence[str] = (),
    special_tokens: str = "model",
) -> list[Any]:
    """``generation.generate`` on a :class:`VLLMSteeredGenerator` (or anything with its
    ``generate(prompt_token_ids, steering=, max_new_tokens=, stop_strings=)``).

    ``model`` (the torch bridge of the same weights) supplies the tokenizer and the prompt
    encoding, so vLLM sees exactly the torch path's token ids. ``first_token_entropy`` is NaN:
    vLLM returns top-k logprobs, not the full distribution. There is no loop stop on vLLM
    (``Decoding`` refuses ``stop_loops`` with the vllm engine).
    """
    from unlock_lens.activations import encode
    from unlock_lens.generation import finish

    if steering is not None and steering.target is not None:
        steering.target.check(model, "this Steering", strict_id=True)
    ids, mask = encode(model, prompts, special_tokens=special_tokens)  # type: ignore[arg-type]
    rows = [ids[i][mask[i].bool()].tolist() for i in range(len(prompts))]
    outs = generator.generate(rows, steering=steering, max_new_tokens=max_new_tokens,
                              stop_strings=stop_strings)
    return [finish(model.tokenizer, p, list(o), stop_strings) for p, o in zip(prompts, outs, strict=True)]
