"""Cached first-token scoring equals the full steered prefill (``final_logits``), 1e-4.

One prefix cache per prompt set, many steering configurations on it, in any order; position
rules that would also edit the cached prefix are refused; two deliberately wrong variants
(no copy of the cache, the last position left unedited) must differ, so the checks can fail.
"""

from __future__ import annotations

import pytest
import torch

from unlock_lens.activations import final_logits
from unlock_lens.diagnostics import cached_scoring
from unlock_lens.diagnostics.cached_scoring import (
    edits_last_prompt_only,
    prefix_cache,
    score_configurations,
    score_last_position,
)
from unlock_lens.errors import UnlockLensError
from unlock_lens.interventions import apply_edit
from unlock_lens.steer import Steering, attached_hooks

ARCHS = ("llama", "qwen2", "gemma3", "gpt2", "qwen3")
# different lengths, so batches are left-padded; the last one is longer than the tiny Gemma3's
# sliding window (64 tokens), so its cache keeps only the window
PROMPTS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "Each box holds",
    "A train travels 60 miles per hour for 2 hours.",
    "If x / 4 = 6",
    "Sam had 20 dollars and spent 8. How much money is left?",
    "What is 100 minus 37?",
    "A farmer has 15 cows",
    " ".join(["There are 12 birds on a tree and 4 fly away."] * 8),
]
ATOL = 1e-4


def _directions(model, seed: int = 0, scale: float = 1.0) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, d = int(model.cfg.n_layers), int(model.cfg.d_model)
    return {layer: scale * torch.randn(d, generator=g) for layer in range(n)}


def _grid(model) -> dict[str, Steering | None]:
    dirs = _directions(model)
    return {
        "none": None,
        "rotate-0.1": Steering(dirs, alpha=0.1),
        "rotate-0.5": Steering(dirs, alpha=0.5),
        "rotate-0.5-layer1": Steering(dirs, alpha=0.5, layers=[1]),
        "rotate-0.5-layers0,2": Steering(_directions(model, seed=1), alpha=0.5, layers=[0, 2]),
        "raw-1.0": Steering(dirs, alpha=1.0, normalisation="raw"),
        "clamp-final": Steering(dirs, alpha=2.0, normalisation="clamp", positions="final"),
        "resid-pre": Steering(dirs, alpha=0.3, hook="resid_pre"),
    }


def _assert_close(got, want):
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_scores_equal_full_steered_prefills(tiny_models, arch):
    model = tiny_models[arch]
    cache = prefix_cache(model, PROMPTS, batch_size=3)
    plain = final_logits(model, PROMPTS, batch_size=3)
    for name, steering in _grid(model).items():
        want = final_logits(model, PROMPTS, batch_size=3, steering=steering)
        got = score_last_position(model, cache, steering)
        assert got.dtype == torch.float32 and got.device.type == "cpu"
        _assert_close(got, want)
        if steering is not None:  # the steering must move the logits, or this proves little
            assert (want - plain).abs().max() > 100 * ATOL, name
    assert attached_hooks(model) == {}


@pytest.mark.parametrize(("arch", "batch_size"), [("gemma3", 1), ("gemma3", 4), ("llama", 16)])
def test_any_batch_size_and_the_cache_survives_any_order(tiny_models, arch, batch_size):
    """Gemma3's layers are sliding-window ones (the long prompt overflows the window), Llama's
    plain dynamic ones: neither is changed by scoring."""
    model = tiny_models[arch]
    grid = _grid(model)
    want = {name: final_logits(model, PROMPTS, batch_size=batch_size, steering=s) for name, s in grid.items()}
    cache = prefix_cache(model, PROMPTS, batch_size=batch_size)
    names = list(grid)
    for order in (names, names[::-1], names[1::2] + names[::2], names):
        for name in order:
            _assert_close(score_last_position(model, cache, grid[name]), want[name])


def test_tokenizer_special_tokens(tiny_models):
    model = tiny_models["qwen2"]
    steering = Steering(_directions(model), alpha=0.5)
    cache = prefix_cache(model, PROMPTS, special_tokens="tokenizer", batch_size=4)
    want = final_logits(model, PROMPTS, batch_size=4, steering=steering, special_tokens="tokenizer")
    _assert_close(score_last_position(model, cache, steering), want)


def test_deeper_model_one_layer_and_negative_alpha(tiny_models):
    model = tiny_models["qwen2-deep"]
    cache = prefix_cache(model, PROMPTS, batch_size=5)
    dirs = _directions(model, seed=3)
    for steering in (Steering(dirs, alpha=-0.4), Steering(dirs, alpha=0.5, layers=[4]),
                     Steering(dirs, alpha=0.0)):
        want = final_logits(model, PROMPTS, batch_size=5, steering=steering)
        _assert_close(score_last_position(model, cache, steering), want)


@pytest.mark.parametrize("positions", ["prompt", "all"])
def test_rules_that_edit_the_prefix_are_refused(tiny_models, positions):
    model = tiny_models["llama"]
    cache = prefix_cache(model, PROMPTS[:2])
    steering = Steering(_directions(model), alpha=0.5, positions=positions)
    with pytest.raises(UnlockLensError, match="final_logits"):
        score_last_position(model, cache, steering)
    assert attached_hooks(model) == {}


def test_which_rules_edit_only_the_last_prompt_position():
    assert edits_last_prompt_only("last_prompt") and edits_last_prompt_only("final")
    assert not edits_last_prompt_only("prompt") and not edits_last_prompt_only("all")


def test_refuses_another_model_and_a_hooked_prefix(tiny_models):
    llama, qwen = tiny_models["llama"], tiny_models["qwen2"]
    cache = prefix_cache(llama, PROMPTS[:2])
    with pytest.raises(UnlockLensError, match="another model"):
        score_last_position(qwen, cache)
    with Steering(_directions(qwen), alpha=0.5).applied(qwen), pytest.raises(UnlockLensError, match="unsteered"):
        prefix_cache(qwen, PROMPTS[:2])
    assert attached_hooks(qwen) == {}


def test_hooks_are_removed_when_the_forward_raises(tiny_models):
    model = tiny_models["qwen2"]
    cache = prefix_cache(model, PROMPTS[:3])

    def boom(module, args, output):
        raise RuntimeError("boom")

    handle = model.ln_final.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            score_last_position(model, cache, Steering(_directions(model), alpha=0.5))
    finally:
        handle.remove()
    assert attached_hooks(model) == {}
    want = final_logits(model, PROMPTS[:3])
    _assert_close(score_last_position(model, cache), want)  # the cache is still good


# --- the checks can fail: deliberately wrong variants must not match --------------------------


def test_reusing_the_cache_without_a_copy_is_caught(tiny_models, monkeypatch):
    model = tiny_models["llama"]
    steering = Steering(_directions(model), alpha=0.5)
    want = final_logits(model, PROMPTS, batch_size=4, steering=steering)
    plain = final_logits(model, PROMPTS, batch_size=4)
    monkeypatch.setattr(cached_scoring, "_fresh_kv", lambda kv: kv)  # the wrong variant
    cache = prefix_cache(model, PROMPTS, batch_size=4)
    _assert_close(score_last_position(model, cache, steering), want)  # first use: still right
    # the prefix now also holds the steered last token: the next configuration attends to it
    assert (score_last_position(model, cache) - plain).abs().max() > 100 * ATOL


def test_leaving_the_last_position_unedited_is_caught(tiny_models, monkeypatch):
    """If the one-position call counted as a decode step, last_prompt would edit nothing."""
    model = tiny_models["gemma3"]
    steering = Steering(_directions(model), alpha=0.5)
    want = final_logits(model, PROMPTS, batch_size=4, steering=steering)
    cache = prefix_cache(model, PROMPTS, batch_size=4)

    def seen_a_prefill() -> None:  # the wrong variant: a prefill already "seen" in the context
        steering._state.seen_prefill = True

    monkeypatch.setattr(steering, "reset", seen_a_prefill)
    got = score_last_position(model, cache, steering)
    assert (got - want).abs().max() > 100 * ATOL
    _assert_close(got, final_logits(model, PROMPTS, batch_size=4))  # = unsteered


def test_a_dropped_cache_is_caught(tiny_models):
    """Emulate the transformers 5.24 break (attention sees no cache): the scores must differ."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    def drop_cache(module, args, kwargs):
        return args, {k: v for k, v in kwargs.items() if k not in ("past_key_values", "cache", "layer_past")}

    model = tiny_models["qwen2"]
    cache = prefix_cache(model, PROMPTS, batch_size=4)
    want = final_logits(model, PROMPTS, batch_size=4)
    handles = [m.register_forward_pre_hook(drop_cache, with_kwargs=True)
               for m in model.modules() if isinstance(m, AttentionBridge)]
    assert handles
    try:
        broken = score_last_position(model, cache)
    finally:
        for h in handles:
            h.remove()
    assert (broken - want).abs().max() > 100 * ATOL
    _assert_close(score_last_position(model, cache), want)


# --- several configurations in one forward --------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_stacked_configurations_equal_full_prefills_one_by_one(tiny_models, arch):
    """Every configuration of the grid (edits, layer sets, alphas, hook kinds, None, alpha 0)
    stacked in one forward per batch equals its own full steered prefill (1e-4) and its
    one-at-a-time cached score (1e-5)."""
    model = tiny_models[arch]
    grid = list(_grid(model).values()) + [Steering(_directions(model, seed=2), alpha=0.0)]
    cache = prefix_cache(model, PROMPTS, batch_size=3)
    stacked = score_configurations(model, cache, grid)
    assert stacked.shape[:2] == (len(grid), len(PROMPTS)) and stacked.dtype == torch.float32
    for c, steering in enumerate(grid):
        _assert_close(stacked[c], final_logits(model, PROMPTS, batch_size=3, steering=steering))
        torch.testing.assert_close(stacked[c], score_last_position(model, cache, steering),
                                   atol=1e-5, rtol=0)
    assert attached_hooks(model) == {}


@pytest.mark.parametrize("max_rows", [1, 5, 64])
def test_any_number_of_configurations_per_forward(tiny_models, max_rows):
    """Gemma3 (sliding-window layers, the long prompt overflows the window): groups of 1, of
    a batch-size-dependent few, and all at once give the same scores; the cache is unchanged."""
    model = tiny_models["gemma3"]
    grid = list(_grid(model).values())
    cache = prefix_cache(model, PROMPTS, batch_size=4)
    want = torch.stack([final_logits(model, PROMPTS, batch_size=4, steering=s) for s in grid])
    for _ in range(2):
        _assert_close(score_configurations(model, cache, grid, max_rows=max_rows), want)
        _assert_close(score_configurations(model, cache, grid[::-1], max_rows=max_rows), want.flip(0))


def test_one_forward_per_batch_for_a_whole_group(tiny_models):
    model = tiny_models["llama"]
    cache = prefix_cache(model, PROMPTS, batch_size=4)  # 2 batches of 4
    calls = {"n": 0}
    handle = model.embed.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        score_configurations(model, cache, list(_grid(model).values()), max_rows=32)  # 4 x 8 rows
    finally:
        handle.remove()
    assert calls["n"] == 2


def test_stacked_scoring_refuses_bad_input_before_any_forward(tiny_models):
    model = tiny_models["llama"]
    cache = prefix_cache(model, PROMPTS[:2])
    good = Steering(_directions(model), alpha=0.5)
    with pytest.raises(UnlockLensError, match="final_logits"):
        score_configurations(model, cache, [good, Steering(_directions(model), alpha=0.5, positions="all")])
    with pytest.raises(UnlockLensError, match="no direction given for layers"):
        score_configurations(model, cache, [good, Steering(_directions(model), alpha=0.5, layers=[7])])
    with pytest.raises(UnlockLensError, match="size"):
        score_configurations(model, cache, [good, Steering({0: torch.ones(5)}, alpha=0.5)])
    with pytest.raises(UnlockLensError, match="another model"):
        score_configurations(tiny_models["qwen2"], cache, [good])
    with pytest.raises(UnlockLensError, match="no configurations"):
        score_configurations(model, cache, [])
    assert attached_hooks(model) == {}


def test_editing_the_wrong_positions_is_caught(tiny_models, monkeypatch):
    """If every configuration's position got the first configuration's edit, the others would
    not match their full prefills."""
    model = tiny_models["qwen2"]
    grid = [Steering(_directions(model, seed=s), alpha=0.5) for s in (0, 1)]
    cache = prefix_cache(model, PROMPTS, batch_size=4)
    want = final_logits(model, PROMPTS, batch_size=4, steering=grid[1])

    def first_edit_everywhere(edits, block):  # the wrong variant
        e = edits[0]
        return lambda x, hook: apply_edit(x, e.direction, e.alpha, e.normalisation)

    monkeypatch.setattr(cached_scoring, "_block_edit_hook", first_edit_everywhere)
    got = score_configurations(model, cache, grid)
    assert (got[1] - want).abs().max() > 100 * ATOL


def test_blocks_that_see_each_other_are_caught(tiny_models, monkeypatch):
    """Without the block-diagonal part of the mask (plain causal attention over the new
    positions) later configurations would attend to earlier ones' steered tokens."""
    model = tiny_models["qwen2"]
    grid = [Steering(_directions(model, seed=s), alpha=0.5) for s in (0, 1)]
    cache = prefix_cache(model, PROMPTS, batch_size=4)
    want = final_logits(model, PROMPTS, batch_size=4, steering=grid[1])
    real = cached_scoring._block_masks

    def causal_across_blocks(kv, mask, configs, block):  # the wrong variant
        masks = real(kv, mask, configs, block)
        n_new = configs * block
        masks[..., -n_new:] = torch.ones(n_new, n_new, dtype=torch.bool).tril()
        return masks

    monkeypatch.setattr(cached_scoring, "_block_masks", causal_across_blocks)
    got = score_configurations(model, cache, grid)
    assert (got[1] - want).abs().max() > 100 * ATOL


def test_the_shared_prefix_is_read_not_copied_per_configuration(tiny_models, monkeypatch):
    """The configurations run side by side on the sequence axis of one forward: the cache's
    layers grow by one block per configuration (8 new positions), not by 8 prefix copies,
    and scoring never changes the cached tensors."""
    model = tiny_models["llama"]
    cache = prefix_cache(model, PROMPTS, batch_size=8)
    kv = cache.batches[0].kv
    before = [(layer.keys.shape, layer.keys.clone()) for layer in kv.layers]
    grown = []
    real = cached_scoring._fresh_kv

    def spy(kv):
        fresh = real(kv)
        grown.append(fresh)
        return fresh

    monkeypatch.setattr(cached_scoring, "_fresh_kv", spy)
    grid = list(_grid(model).values())
    score_configurations(model, cache, grid)
    (fresh,) = grown
    b, h, t, d = kv.layers[0].keys.shape
    assert fresh.layers[0].keys.shape == (b, h, t + len(grid), d)
    for layer, (shape, keys) in zip(kv.layers, before, strict=True):
        assert layer.keys.shape == shape and torch.equal(layer.keys, keys)


@pytest.mark.slow
def test_real_gemma_matches_full_prefills(questions):
    """Gemma-3-270M (sliding-window and global layers, 262k vocabulary), the authors' format."""
    from unlock_lens.errors import UnlockLensError
    from unlock_lens.models import load_model
    from unlock_lens.prompts import get_format

    try:
        model = load_model("gemma-3-270m")
    except UnlockLensError as err:
        pytest.skip(f"gemma-3-270m not available offline: {err}")
    fmt = get_format("general-direct")
    prompts = fmt.render_all(questions, model.tokenizer)
    cache = prefix_cache(model, prompts, special_tokens=fmt.special_tokens, batch_size=4)
    dirs = _directions(model)
    grid = (None, Steering(dirs, alpha=0.1), Steering(dirs, alpha=0.5, layers=[3, 9, 15]))
    stacked = score_configurations(model, cache, grid)
    for c, steering in enumerate(grid):
        want = final_logits(model, prompts, batch_size=4, steering=steering,
                            special_tokens=fmt.special_tokens)
        _assert_close(score_last_position(model, cache, steering), want)
        _assert_close(stacked[c], want)
