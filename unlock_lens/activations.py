"""Batched capture of final-token residual streams (and final logits) through hook points.

Works on any model exposing TransformerLens hook points and a ``hooks(fwd_hooks=...)``
context manager (a TransformerLens 4 ``TransformerBridge``, a TL 3 ``HookedTransformer``).
Prompts are tokenised with left padding so index -1 is the last real token of every row, and
sorted by length so batches carry little padding; only the requested hooks are attached.

Every call leaves the model as it found it: hooks (capture hooks and a ``steering``'s) are
attached per batch through the model's ``hooks()`` context and removed on return and on any
exception, ``KeyboardInterrupt`` included. For prompt sets too large for memory, see
:func:`unlock_lens.streaming.capture_to_disk` (per-batch shards on disk, resumable).

Determinism: on CPU the same model, prompts, batch size and settings give bit-identical
activations (and so identical keys, maps and tables) from run to run; the batch plan is a
pure function of the token lengths. Changing ``batch_size`` changes the padding and the
kernels' reduction order, so results then agree only to float32 rounding (~1e-6 relative).
On GPU, cuBLAS / attention kernels may pick different algorithms between runs: expect
agreement to ~1e-5 relative in float32 and ~1e-2 in float16 / bfloat16 unless
``torch.use_deterministic_algorithms(True)`` is set (with ``CUBLAS_WORKSPACE_CONFIG=:4096:8``),
which makes repeated runs on the same GPU and software stack bit-identical.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from unlock_lens.errors import UnlockLensError
from unlock_lens.prompts import PromptFormat, SpecialTokens, get_format

HookKind = Literal["resid_post", "resid_pre"]
#: the state read at the model's last layer: ``block`` = the block output (``hook_resid_post``,
#: the state the steering edit hits; unlock_lens's default), ``final_norm`` = after the final norm
#: (Hugging Face's ``hidden_states[-1]``, what the UNLOCK authors' code reads there)
FinalLayer = Literal["block", "final_norm"]
FINAL_NORM_HOOK = "ln_final.hook_out"


def hook_name(layer: int, kind: HookKind = "resid_post") -> str:
    """``blocks.{layer}.hook_resid_post`` (block output) or ``hook_resid_pre`` (block input)."""
    if kind not in ("resid_post", "resid_pre"):
        raise UnlockLensError(f"unknown hook kind {kind!r}; use 'resid_post' or 'resid_pre'")
    return f"blocks.{layer}.hook_{kind}"


def capture_hook_name(model: Any, layer: int, kind: HookKind = "resid_post",
                      final_layer: FinalLayer = "block") -> str:
    """The hook a capture reads at ``layer``: :func:`hook_name`, except the last layer under
    ``final_layer="final_norm"``, which reads the final norm's output."""
    if final_layer not in ("block", "final_norm"):
        raise UnlockLensError(f"unknown final_layer {final_layer!r}; use 'block' or 'final_norm'")
    if final_layer == "block" or layer != int(model.cfg.n_layers) - 1:
        return hook_name(layer, kind)
    if kind != "resid_post":
        raise UnlockLensError("final_layer='final_norm' reads block outputs: use hook='resid_post'")
    if FINAL_NORM_HOOK not in getattr(model, "hook_dict", {FINAL_NORM_HOOK: None}):
        raise UnlockLensError(
            f"this model has no {FINAL_NORM_HOOK!r} hook to read the post-final-norm state: "
            "use final_layer='block'"
        )
    return FINAL_NORM_HOOK


def check_layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    """All layers when ``None``; otherwise validated, negative indices resolved."""
    n = int(model.cfg.n_layers)
    if layers is None:
        return list(range(n))
    out = []
    for layer in layers:
        if not -n <= int(layer) < n:
            raise UnlockLensError(
                f"layer {layer} is out of range for a model with {n} layers (valid: 0..{n - 1})"
            )
        out.append(int(layer) % n)
    if len(set(out)) != len(out):
        raise UnlockLensError(f"layers {list(layers)} name a layer twice")
    return out


@dataclass(frozen=True)
class Variant:
    """A model together with the prompt format it is run with (one side of a contrast).

    ``tokenizer_of``: another model whose tokenizer renders and encodes this variant's prompts
    (default: the model's own); the authors tokenise a model-driven key's base-model prompts
    with the post-trained model's tokenizer. Pass it on to :func:`capture`.
    """

    model: Any
    format: PromptFormat
    tokenizer_of: Any = None

    def __init__(self, model: Any, format: PromptFormat | str, tokenizer_of: Any = None) -> None:
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "format", get_format(format))
        object.__setattr__(self, "tokenizer_of", tokenizer_of)

    def prompts(self, questions: Sequence[str]) -> list[str]:
        return self.format.render_all(questions, (self.tokenizer_of or self.model).tokenizer)

    @property
    def special_tokens(self) -> SpecialTokens:
        """How this variant's prompts are tokenised (pass it to capture / generate)."""
        return self.format.special_tokens


def published_tokenizer(model: Any) -> Any:
    """The model's Hugging Face tokenizer with its published special-token defaults.

    A TransformerBridge loads its tokenizer with ``add_bos_token=True`` whatever the
    checkpoint says, so ``model.tokenizer(text)`` may prepend a BOS the checkpoint's own
    tokenizer does not (SmolLM2, Qwen). This one is loaded from ``model.tokenizer.name_or_path``
    once and kept on the model.
    """
    cached = getattr(model, "_published_tokenizer", None)
    if cached is not None:
        return cached
    source = getattr(model.tokenizer, "name_or_path", None)
    if getattr(model, "original_model", None) is None or not source:
        return model.tokenizer  # not a bridge over a Hugging Face checkpoint: its own tokenizer
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise UnlockLensError(
            f"cannot load the published tokenizer of {source!r} to tokenise with its own special "
            f"tokens ({err}): use special_tokens='model'"
        ) from None
    model._published_tokenizer = tok
    return tok


def tokenize(
    model: Any, prompt: str, *, special_tokens: SpecialTokens = "model", offsets: bool = False
) -> tuple[list[int], list[tuple[int, int]] | None]:
    """One prompt's token ids as :func:`encode` feeds them, and (``offsets=True``) each token's
    character span in ``prompt`` (special tokens get ``(0, 0)``).

    ``special_tokens="model"``: BOS follows ``model.cfg.default_prepend_bos`` (as
    TransformerLens does) unless the text already starts with it (chat templates write their
    own). ``"tokenizer"``: exactly ``tokenizer(text)["input_ids"]`` with the checkpoint's
    published tokenizer (:func:`published_tokenizer`), the Hugging Face defaults.
    """
    if special_tokens not in ("model", "tokenizer"):
        raise UnlockLensError(f"unknown special_tokens {special_tokens!r}; use 'model' or 'tokenizer'")
    tok = published_tokenizer(model) if special_tokens == "tokenizer" else model.tokenizer
    enc = tok(prompt, add_special_tokens=special_tokens == "tokenizer", return_offsets_mapping=offsets)
    ids = list(enc["input_ids"])
    spans = [tuple(o) for o in enc["offset_mapping"]] if offsets else None
    bos_id = model.tokenizer.bos_token_id
    if special_tokens == "model" and model.cfg.default_prepend_bos and bos_id is not None \
            and (not ids or ids[0] != bos_id):
        ids = [bos_id, *ids]
        spans = [(0, 0), *spans] if spans is not None else None
    return ids, spans


def encode(
    model: Any, prompts: Sequence[str], *, special_tokens: SpecialTokens = "model", tokenizer_of: Any = None
) -> tuple[Int[Tensor, "n pos"], Int[Tensor, "n pos"]]:
    """Token ids (:func:`tokenize`) and attention mask, left-padded.

    ``tokenizer_of``: tokenise as that model would (its tokenizer and special tokens) and feed
    the ids to ``model`` (:class:`Variant`); they must fit ``model``'s vocabulary.
    """
    if len(prompts) == 0:
        raise UnlockLensError("the prompt list is empty: pass at least one prompt")
    tok = model.tokenizer
    rows: list[list[int]] = []
    for p in prompts:
        ids, _ = tokenize(tokenizer_of or model, p, special_tokens=special_tokens)
        if not ids:
            raise UnlockLensError("a prompt tokenises to nothing: remove empty prompts")
        rows.append(ids)
    d_vocab = getattr(model.cfg, "d_vocab", None)
    top = max(max(r) for r in rows)
    if tokenizer_of is not None and d_vocab and top >= d_vocab:
        raise UnlockLensError(
            f"the other model's tokenizer gives token id {top}, outside this "
            f"model's vocabulary of {d_vocab}: the two do not share a vocabulary; tokenise each "
            "model's prompts with its own tokenizer"
        )
    n_ctx = getattr(model.cfg, "n_ctx", None)
    longest = max(len(r) for r in rows)
    if n_ctx and longest > n_ctx:
        raise UnlockLensError(
            f"a prompt is {longest} tokens, longer than the model's context of {n_ctx}: "
            "shorten the prompts (fewer few-shot examples) or use a longer-context model"
        )
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ids_t = torch.full((len(rows), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        ids_t[i, longest - len(r) :] = torch.tensor(r)
        mask[i, longest - len(r) :] = 1
    return ids_t, mask


def position_ids(mask: Int[Tensor, "n pos"]) -> Int[Tensor, "n pos"]:
    """Positions counted from each row's first real token (pads get 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def model_device(model: Any) -> torch.device:
    dev = getattr(model.cfg, "device", None)
    if dev is not None:
        return torch.device(dev)
    return next(model.parameters()).device


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int
) -> Iterator[list[int]]:
    """Index batches over prompts sorted by length (longest first), to cut padding."""
    if batch_size < 1:
        raise UnlockLensError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _token_lengths(model: Any, prompts: Sequence[str]) -> list[int]:
    return [len(model.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]


def plan_batches(model: Any, prompts: Sequence[str], batch_size: int, tokenizer_of: Any = None) -> list[list[int]]:
    """The batch plan :func:`forward_batches` uses: prompt indices per batch, longest first
    (lengths from ``tokenizer_of``'s tokenizer when given, as :func:`encode`)."""
    if len(prompts) == 0:
        raise UnlockLensError("the prompt list is empty: pass at least one prompt")
    return list(length_sorted_batches(_token_lengths(tokenizer_of or model, prompts), batch_size))


def forward_batches(
    model: Any,
    prompts: Sequence[str],
    fwd_hooks: Callable[[list[int]], list[tuple[str, Callable]]],
    *,
    batch_size: int = 16,
    progress: bool | str = False,
    return_logits: bool = False,
    steering: Any = None,
    batches: Sequence[list[int]] | None = None,
    special_tokens: SpecialTokens = "model",
    tokenizer_of: Any = None,
) -> Iterator[tuple[list[int], Tensor | None]]:
    """Run prompts in length-sorted, left-padded batches with per-batch hooks.

    Yields ``(indices, final-position logits or None)``; hooks see the batch in that order.
    ``steering`` is entered afresh for every batch (each batch is its own prefill), and all
    hooks are off the model whenever control is back with the caller. ``batches`` runs
    only those index batches (default: :func:`plan_batches`). ``special_tokens``,
    ``tokenizer_of``: see :func:`encode`.
    """
    if len(prompts) == 0:
        raise UnlockLensError("the prompt list is empty: pass at least one prompt")
    device = model_device(model)
    if batches is None:
        batches = plan_batches(model, prompts, batch_size, tokenizer_of)
    desc = progress if isinstance(progress, str) else "forward"
    for idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
        ids, mask = encode(model, [prompts[i] for i in idx], special_tokens=special_tokens,
                           tokenizer_of=tokenizer_of)
        ids, mask = ids.to(device), mask.to(device)
        ctx = steering.applied(model) if steering is not None else nullcontext()
        kwargs = forward_kwargs(model, mask)
        with torch.inference_mode(), ctx, model.hooks(fwd_hooks=fwd_hooks(idx)):
            out = model(ids, return_type="logits" if return_logits else None, **kwargs)
        yield idx, (out[:, -1].float() if return_logits else None)


def _accepts_kwarg(model: Any, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def forward_kwargs(model: Any, mask: Tensor) -> dict[str, Any]:
    """Mask and positions for left padding; ``logits_to_keep=1`` (HF) so the unembedding runs
    for the final position only (a 262k-token vocabulary costs as much as the blocks).
    TransformerLens 3 models take neither extra keyword."""
    kwargs: dict[str, Any] = {"attention_mask": mask}
    if _accepts_kwarg(model, "position_ids"):
        kwargs["position_ids"] = position_ids(mask)
    if getattr(model, "original_model", None) is not None:  # a bridge over an HF model
        kwargs["logits_to_keep"] = 1
    return kwargs


def iter_capture(
    model: Any,
    prompts: Sequence[str],
    layers: Sequence[int] | None = None,
    *,
    hook: HookKind = "resid_post",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool | str = False,
    steering: Any = None,
    batches: Sequence[list[int]] | None = None,
    special_tokens: SpecialTokens = "model",
    final_layer: FinalLayer = "block",
    tokenizer_of: Any = None,
) -> Iterator[tuple[list[int], Float[Tensor, "b n_layers d_model"]]]:
    """Per batch: ``(prompt indices, final-token states [b, L, d] float32)``.

    ``special_tokens``, ``tokenizer_of``: see :func:`encode`; ``final_layer``: see
    :func:`capture_hook_name`.

    Only one batch of rows is held at a time; :func:`capture` and
    :func:`unlock_lens.streaming.capture_to_disk` are built on it. Raises on NaN/inf.
    """
    layers = check_layers(model, layers)
    d = int(model.cfg.d_model)
    current: dict[str, Tensor] = {}

    def make_hook(j: int) -> Callable:
        def save(x: Tensor, hook: Any) -> Tensor:
            current["buf"][:, j] = x[:, -1].detach().to(device=device, dtype=torch.float32)
            return x

        return save

    hooks = [(capture_hook_name(model, layer, hook, final_layer), make_hook(j))
             for j, layer in enumerate(layers)]

    def hooks_for(idx: list[int]) -> list[tuple[str, Callable]]:
        current["buf"] = new_rows(len(idx), len(layers), d, device)
        return hooks

    for idx, _ in forward_batches(model, prompts, hooks_for, batch_size=batch_size,
                                  progress=progress, steering=steering, batches=batches,
                                  special_tokens=special_tokens, tokenizer_of=tokenizer_of):
        rows = current.pop("buf")
        if not torch.isfinite(rows).all():
            bad = (~torch.isfinite(rows)).sum().item()
            raise UnlockLensError(
                f"{bad} captured activation entries are NaN/inf: the model overflowed in its "
                "dtype; load it in float32"
            )
        yield idx, rows
        del rows


def iter_capture_positions(
    model: Any,
    prompts: Sequence[str],
    positions: Sequence[Sequence[int]],
    layers: Sequence[int] | None = None,
    *,
    hook: HookKind = "resid_post",
    batch_size: int = 16,
    special_tokens: SpecialTokens = "model",
    final_layer: FinalLayer = "block",
    progress: bool | str = False,
) -> Iterator[tuple[list[int], list[Float[Tensor, "m n_layers d_model"]]]]:
    """Per batch: ``(prompt indices, per prompt the states [len(positions[i]), L, d] float32)``
    at token indices ``positions[i]`` of :func:`tokenize`'s ids (any positions, not only the
    last). One batch of rows is held at a time: what a streamed alignment fit consumes."""
    if len(positions) != len(prompts):
        raise UnlockLensError(f"{len(positions)} position lists for {len(prompts)} prompts: give one per prompt")
    layers = check_layers(model, layers)
    lengths = [len(tokenize(model, p, special_tokens=special_tokens)[0]) for p in prompts]
    for i, pos in enumerate(positions):
        if any(not 0 <= int(j) < lengths[i] for j in pos):
            raise UnlockLensError(f"prompt {i} has {lengths[i]} tokens; positions {list(pos)} fall outside")
    current: dict[str, Any] = {}

    def make_hook(j: int) -> Callable:
        def save(x: Tensor, hook: Any) -> Tensor:
            rows, cols = current["index"]
            current["buf"][:, j] = x[rows, cols].detach().to(device="cpu", dtype=torch.float32)
            return x

        return save

    hooks = [(capture_hook_name(model, layer, hook, final_layer), make_hook(j))
             for j, layer in enumerate(layers)]

    def hooks_for(idx: list[int]) -> list[tuple[str, Callable]]:
        longest = max(lengths[i] for i in idx)
        rows = [k for k, i in enumerate(idx) for _ in positions[i]]
        cols = [longest - lengths[i] + int(j) for i in idx for j in positions[i]]
        current["index"] = (torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long))
        current["buf"] = new_rows(len(rows), len(layers), int(model.cfg.d_model), "cpu")
        return hooks

    for idx, _ in forward_batches(model, prompts, hooks_for, batch_size=batch_size, progress=progress,
                                  special_tokens=special_tokens):
        rows = current.pop("buf")
        if not torch.isfinite(rows).all():
            raise UnlockLensError("captured activations are NaN/inf: load the model in float32")
        yield idx, list(rows.split([len(positions[i]) for i in idx]))


def new_rows(n: int, n_layers: int, d: int, device: str | torch.device) -> Tensor:
    """The per-batch activation buffer (one place to allocate it: tests instrument this)."""
    return torch.empty((n, n_layers, d), dtype=torch.float32, device=device)


def capture(
    model: Any,
    prompts: Sequence[str],
    layers: Sequence[int] | None = None,
    *,
    hook: HookKind = "resid_post",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool | str = False,
    steering: Any = None,
    special_tokens: SpecialTokens = "model",
    final_layer: FinalLayer = "block",
    tokenizer_of: Any = None,
) -> Float[Tensor, "n n_layers d_model"]:
    """Final-token residual stream at ``layers`` (default: all), float32, shape [n, L, d].

    ``steering`` (a :class:`unlock_lens.steer.Steering`) is applied during capture if given;
    ``tokenizer_of``: see :func:`encode` (a :class:`Variant`'s).
    Holds all n rows in memory; for large prompt sets stream them to disk with
    :func:`unlock_lens.streaming.capture_to_disk`.
    """
    layers = check_layers(model, layers)
    if len(prompts) == 0:
        raise UnlockLensError("the prompt list is empty: pass at least one prompt")
    out = torch.empty((len(prompts), len(layers), int(model.cfg.d_model)), dtype=torch.float32,
                      device=device)
    for idx, rows in iter_capture(model, prompts, layers, hook=hook, batch_size=batch_size,
                                  device=device, progress=progress, steering=steering,
                                  special_tokens=special_tokens, final_layer=final_layer,
                                  tokenizer_of=tokenizer_of):
        out[idx] = rows
    return out


def capture_pair(
    source: Variant,
    target: Variant,
    questions: Sequence[str],
    source_layers: Sequence[int],
    target_layers: Sequence[int],
    *,
    hook: HookKind = "resid_post",
    batch_size: int = 16,
    progress: bool = False,
    final_layer: FinalLayer = "block",
) -> tuple[Float[Tensor, "n n_src_layers d_src"], Float[Tensor, "n n_tgt_layers d_tgt"]]:
    """The same questions through both sides, each in its own format, tokenizer and special
    tokens: the paired captures an alignment is fitted on (row i of both = question i)."""
    if len(questions) < 2:
        raise UnlockLensError("alignment needs at least 2 shared questions (the paper uses hundreds)")
    H_s = capture(source.model, source.prompts(questions), source_layers, hook=hook,
                  batch_size=batch_size, progress="capture source" if progress else False,
                  special_tokens=source.special_tokens, final_layer=final_layer,
                  tokenizer_of=source.tokenizer_of)
    H_t = capture(target.model, target.prompts(questions), target_layers, hook=hook,
                  batch_size=batch_size, progress="capture target" if progress else False,
                  special_tokens=target.special_tokens, final_layer=final_layer,
                  tokenizer_of=target.tokenizer_of)
    return H_s, H_t


def final_logits(
    model: Any,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    steering: Any = None,
    progress: bool | str = False,
    special_tokens: SpecialTokens = "model",
) -> Float[Tensor, "n d_vocab"]:
    """Logits for the next token after each prompt (float32, CPU), optionally steered."""
    rows: dict[int, Tensor] = {}
    for idx, logits in forward_batches(
        model, prompts, lambda idx: [], batch_size=batch_size, progress=progress,
        return_logits=True, steering=steering, special_tokens=special_tokens,
    ):
        assert logits is not None
        for k, i in enumerate(idx):
            rows[i] = logits[k].cpu()
    return torch.stack([rows[i] for i in range(len(prompts))])
