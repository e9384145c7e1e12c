"""Chunked vocabulary read-out: first-token measures without holding the logits.

The oracle for the sums is PyTorch on whole logits (``logsumexp``, ``softmax``, ``argmax``);
for the configurations, full steered prefills (``final_logits``) on five tiny architectures.
"""

from __future__ import annotations

import pytest
import torch
from test_cached_scoring import ARCHS, PROMPTS as CACHED_PROMPTS

from unlock_lens.activations import final_logits
from unlock_lens.diagnostics.cached_scoring import prefix_cache
from unlock_lens.diagnostics.readout import (
    linear_readout,
    logit_chunks,
    readout_configurations,
    stats_from_logits,
    stats_from_states,
    vocab_sums,
)
from unlock_lens.errors import UnlockLensError
from unlock_lens.steer import Steering, attached_hooks

# the cached-scoring tests' prompts: left-padded batches, one longer than Gemma3's sliding window
PROMPTS = CACHED_PROMPTS[:5] + CACHED_PROMPTS[-1:]


def _whole(logits: torch.Tensor, ref_logits: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    log_p, log_q = torch.log_softmax(ref_logits, -1), torch.log_softmax(logits, -1)
    return {"kl": (log_p.exp() * (log_p - log_q)).sum(-1), "entropy": -(log_q.exp() * log_q).sum(-1),
            "log_q": log_q.gather(-1, tokens), "argmax": logits.argmax(-1)}


def _streamed(stats, ref_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    log_p = torch.log_softmax(ref_logits, -1)
    return {"kl": stats.kl((log_p.exp() * log_p).sum(-1)), "entropy": stats.entropy(),
            "log_q": stats.log_q(), "argmax": stats.argmax}


def _assert_close(got: dict, want: dict, atol: float = 1e-4) -> None:
    for name in want:
        if name == "argmax":
            assert torch.equal(got[name], want[name]), name
        else:
            torch.testing.assert_close(got[name], want[name], atol=atol, rtol=1e-4, msg=name)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("with_entropy", [True, False])
def test_vocabulary_sums_in_chunks_equal_whole_vocabulary_sums(chunk, with_entropy):
    """Any chunk size (one column, an odd size, larger than the vocabulary), chunks in reverse
    order, a row with a tie for the max (argmax takes the lowest column) and a row whose max
    arrives late (the running sums are rescaled)."""
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(6, 300, generator=g)
    logits[0, [10, 200]] = 50.0
    logits[1, 5] = 80.0
    chunks = [(start, part.clone()) for start, part in logit_chunks(logits, chunk)][::-1]
    lse, q_dot, argmax = vocab_sums(iter(chunks), with_entropy=with_entropy)
    torch.testing.assert_close(lse, logits.logsumexp(-1))
    assert torch.equal(argmax, logits.argmax(-1)) and int(argmax[0]) == 10
    if with_entropy:
        torch.testing.assert_close(q_dot, (torch.softmax(logits, -1) * logits).sum(-1), atol=1e-5, rtol=1e-5)
    else:
        assert q_dot.isnan().all()


def test_states_and_logits_give_the_same_stats():
    """The linear shortcuts (sum p z = x . pW + p . bias; z at a token = x . W[token] + bias)
    equal the sums over logits, for three groups of rows sharing one reference per prompt."""
    g = torch.Generator().manual_seed(1)
    groups, b, d, vocab = 3, 4, 8, 50
    states, weight, bias = torch.randn(groups, b, d, generator=g), torch.randn(vocab, d, generator=g), torch.randn(vocab, generator=g)
    ref = 3 * torch.randn(b, vocab, generator=g)
    tokens = torch.randint(0, vocab, (b, 3), generator=g)
    logits = states @ weight.T + bias
    from_states = stats_from_states(states, weight, bias, torch.softmax(ref, -1), tokens, vocab_chunk=16)
    from_logits = stats_from_logits(logits, torch.softmax(ref, -1), tokens, vocab_chunk=16)
    want = _whole(logits.reshape(groups * b, -1), ref.repeat(groups, 1), tokens.repeat(groups, 1))
    for stats in (from_states, from_logits):
        _assert_close(_streamed(stats, ref.repeat(groups, 1)), want, atol=1e-5)


def _grid(model) -> list[Steering | None]:
    g = torch.Generator().manual_seed(0)
    n, d = int(model.cfg.n_layers), int(model.cfg.d_model)
    dirs = {layer: torch.randn(d, generator=g) for layer in range(n)}
    return [None, Steering(dirs, alpha=0.5), Steering(dirs, alpha=0.5, layers=[1]),
            Steering(dirs, alpha=1.0, normalisation="raw"), Steering(dirs, alpha=0.3, hook="resid_pre"),
            Steering(dirs, alpha=2.0, normalisation="clamp", positions="final")]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("readout", ["linear", "model logits"])
def test_readout_equals_full_steered_prefills(tiny_models, arch, readout):
    """Every configuration's KL to a reference, entropy, log q of each prompt's reference top-3
    and argmax equal those of its full steered prefill, whether the vocabulary is read out here
    (``linear``) or from the model's logits (the path a soft-capped model takes), with
    configurations split over several forwards (max_rows 7) or not."""
    model = tiny_models[arch]
    cache = prefix_cache(model, PROMPTS, batch_size=4)
    assert linear_readout(model, cache) is not None  # the tiny models' heads are plain linear
    if readout == "model logits":
        cache.memo["linear_readout"] = None
    ref_logits = final_logits(model, [p + " Let's think" for p in PROMPTS])
    tokens = ref_logits.topk(3, -1).indices
    grid = _grid(model)
    for max_rows in (7, None):
        got = list(readout_configurations(model, cache, grid, torch.softmax(ref_logits, -1), tokens,
                                          max_rows=max_rows, vocab_chunk=100))
        for steering, stats in zip(grid, got, strict=True):
            want = _whole(final_logits(model, PROMPTS, steering=steering, batch_size=4), ref_logits, tokens)
            _assert_close(_streamed(stats, ref_logits), want)
    assert not attached_hooks(model)  # the stop at the read-out left no hook behind


def test_a_head_that_is_not_a_plain_linear_map_is_detected(tiny_models):
    """Logits scaled after the head (as a soft-capped model's are) fail the check, so the
    measures come from the model's own logits."""
    model = tiny_models["llama"]
    cache = prefix_cache(model, PROMPTS[:3])
    with model.hooks(fwd_hooks=[("unembed.hook_out", lambda x, hook: 2 * x)]):
        assert linear_readout(model, cache) is None
    assert cache.memo["linear_readout"] is None


def test_bad_input_is_refused_before_any_forward(tiny_models):
    model = tiny_models["qwen2"]
    cache = prefix_cache(model, PROMPTS[:3])
    ref = torch.softmax(torch.randn(2, 10), -1)
    with pytest.raises(UnlockLensError, match="one row per prompt"):
        readout_configurations(model, cache, [None], ref, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(UnlockLensError, match="at least one"):
        readout_configurations(model, cache, [], ref, torch.zeros(3, 1, dtype=torch.long))
    vocab = int(model.cfg.d_vocab)
    with pytest.raises(UnlockLensError, match=f"{vocab} tokens"):
        readout_configurations(model, cache, [None], torch.ones(3, 10) / 10, torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(UnlockLensError, match="token ids"):
        readout_configurations(model, cache, [None], torch.ones(3, vocab) / vocab, torch.full((3, 1), vocab))


def test_a_first_token_reference_measures_a_readout_as_it_measures_logits(tiny_models):
    """The sweep's measures (KL, entropy, p of the reference's top token, top-1 agreement) from
    a read-out equal :meth:`FirstTokenReference.measures` on the configuration's logits; a
    restricted reference refuses a read-out."""
    from unlock_lens.diagnostics.cached_scoring import score_configurations
    from unlock_lens.diagnostics.restricted_vocab import FirstTokenReference

    model = tiny_models["gemma3"]
    cache = prefix_cache(model, PROMPTS, batch_size=4)
    reference = FirstTokenReference(final_logits(model, [p + " Let's think" for p in PROMPTS]))
    grid = _grid(model)
    stats = list(readout_configurations(model, cache, grid, reference.probabilities, reference.top[:, None]))
    for logits, one in zip(score_configurations(model, cache, grid), stats, strict=True):
        want, got = reference.measures(logits), reference.readout_measures(one)
        for name in want:
            torch.testing.assert_close(got[name], want[name], atol=1e-4, rtol=1e-4, msg=name)
    restricted = FirstTokenReference(final_logits(model, PROMPTS), k=5)
    with pytest.raises(UnlockLensError, match="full-vocabulary"):
        restricted.readout_measures(stats[0])
