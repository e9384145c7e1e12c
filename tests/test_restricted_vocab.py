"""First-token measures, full and restricted vocabulary, against SciPy / NumPy in float64.

Full vocabulary: KL and entropy equal ``scipy.stats.entropy``. Restricted (the reference's
top-k union plus a rest bucket): exact when the union is the whole vocabulary; otherwise the
KL and entropy of the merged distributions (merged here in NumPy), and the error they make is
the chain rule's missing term, ``p_rest KL(p|rest || q|rest)`` for KL and ``q_rest H(q|rest)``
for entropy, computed independently.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy as scipy_entropy

from unlock_lens.activations import final_logits
from unlock_lens.diagnostics.restricted_vocab import (
    FirstTokenReference,
    first_token_measures,
    top_k_support,
)
from unlock_lens.errors import UnlockLensError
from unlock_lens.steer import Steering


def _logits(n: int = 6, vocab: int = 400, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed))


def _pair_from_tiny_model(model, questions) -> tuple[torch.Tensor, torch.Tensor]:
    """A model's next-token logits unsteered (reference) and steered (configuration)."""
    g = torch.Generator().manual_seed(0)
    dirs = {layer: torch.randn(int(model.cfg.d_model), generator=g) for layer in range(int(model.cfg.n_layers))}
    return final_logits(model, questions), final_logits(model, questions, steering=Steering(dirs, alpha=5.0, normalisation="raw"))


def _scipy(ref: torch.Tensor, logits: torch.Tensor):
    p, q = softmax(ref.double().numpy(), -1), softmax(logits.double().numpy(), -1)
    return p, q, np.array([scipy_entropy(a, b) for a, b in zip(p, q, strict=True)]), scipy_entropy(q, axis=-1)


def test_full_vocabulary_equals_scipy(tiny_models, questions):
    for ref, logits in [(_logits(seed=1), _logits(seed=2)), _pair_from_tiny_model(tiny_models["qwen2"], questions)]:
        p, q, kl, ent = _scipy(ref, logits)
        got = first_token_measures(ref, logits)
        np.testing.assert_allclose(got["kl"].numpy(), kl, atol=2e-5)
        np.testing.assert_allclose(got["entropy"].numpy(), ent, atol=2e-5)
        top = p.argmax(-1)
        np.testing.assert_allclose(got["p_ref_top"].numpy(), q[np.arange(len(q)), top], atol=1e-6)
        np.testing.assert_array_equal(got["top1_agree"].numpy(), (q.argmax(-1) == top).astype(np.float32))
        assert kl.min() > 0.01  # the two distributions differ, so the check has something to check


def test_restricted_to_the_whole_vocabulary_is_exact(tiny_models, questions):
    ref, logits = _pair_from_tiny_model(tiny_models["llama"], questions)
    vocab = ref.shape[-1]
    full = first_token_measures(ref, logits)
    restricted = FirstTokenReference(ref, k=vocab)
    assert restricted.support.numel() == vocab
    got = restricted.measures(logits)
    for m in full:
        torch.testing.assert_close(got[m], full[m], atol=2e-5, rtol=0)


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_restricted_measures_are_the_merged_distributions_and_their_error_is_the_chain_rule_term(k):
    ref, logits = _logits(seed=3), _logits(seed=4)
    p, q, kl, ent = _scipy(ref, logits)
    support = np.unique(np.argsort(-p, axis=-1)[:, :k])
    rest = np.setdiff1d(np.arange(p.shape[-1]), support)
    merged_p = np.concatenate([p[:, support], p[:, rest].sum(-1, keepdims=True)], -1)
    merged_q = np.concatenate([q[:, support], q[:, rest].sum(-1, keepdims=True)], -1)
    got = first_token_measures(ref, logits, k=k)
    np.testing.assert_array_equal(top_k_support(ref, k).numpy(), support)
    np.testing.assert_allclose(got["kl"].numpy(), [scipy_entropy(a, b) for a, b in zip(merged_p, merged_q, strict=True)],
                               atol=2e-5)
    np.testing.assert_allclose(got["entropy"].numpy(), scipy_entropy(merged_q, axis=-1), atol=2e-5)
    p_rest, q_rest = p[:, rest].sum(-1), q[:, rest].sum(-1)
    kl_within = np.array([scipy_entropy(a, b) for a, b in zip(p[:, rest], q[:, rest], strict=True)])
    np.testing.assert_allclose(kl - got["kl"].numpy(), p_rest * kl_within, atol=5e-5)
    np.testing.assert_allclose(ent - got["entropy"].numpy(), q_rest * scipy_entropy(q[:, rest], axis=-1), atol=5e-5)
    assert (ent - got["entropy"].numpy() <= q_rest * np.log(len(rest)) + 1e-5).all()
    # p(reference top) and top-1 agreement do not depend on k
    full = first_token_measures(ref, logits)
    torch.testing.assert_close(got["p_ref_top"], full["p_ref_top"])
    torch.testing.assert_close(got["top1_agree"], full["top1_agree"])


def test_the_error_falls_as_k_grows_on_a_tiny_model(tiny_models, questions):
    """Real numbers: a random Qwen2's steered vs unsteered first token (vocabulary 442, mean KL
    0.030): the error of the mean KL is 0.027, 0.023, 0.009 at k = 1, 10, 100 and 0 at 442."""
    ref, logits = _pair_from_tiny_model(tiny_models["qwen2"], questions)
    full = float(first_token_measures(ref, logits)["kl"].mean())
    errors = [full - float(first_token_measures(ref, logits, k=k)["kl"].mean()) for k in (1, 10, 100, ref.shape[-1])]
    assert errors[0] > 0.02 and errors[0] > errors[1] > errors[2] > -1e-5  # coarse merges lose KL
    assert abs(errors[-1]) < 1e-5


def test_a_confident_configuration_keeps_its_tiny_rest():
    """A configuration with 1 - 1e-17 of its mass on the support: the rest is not cancelled to
    0 (which would make the KL infinite). The rest splits evenly under both distributions here,
    so the bucketed KL equals the full one, which SciPy gives in float64."""
    ref = torch.tensor([[1.0, 0.0, 0.0]])
    logits = torch.tensor([[40.0, 0.0, 0.0]])
    got = first_token_measures(ref, logits, k=1)
    _, _, kl, ent = _scipy(ref, logits)
    np.testing.assert_allclose(got["kl"].numpy(), kl, rtol=1e-5)
    assert 15.9 < float(got["kl"][0]) < 16.1  # p_rest 0.42 x ~38 nats
    np.testing.assert_allclose(got["entropy"].numpy(), ent, atol=1e-12)  # ~8e-16 nats either way


def test_bad_input_is_refused():
    ref = _logits(n=2, vocab=10)
    with pytest.raises(UnlockLensError, match="k must be in"):
        FirstTokenReference(ref, k=0)
    with pytest.raises(UnlockLensError, match="k must be in"):
        FirstTokenReference(ref, k=11)
    with pytest.raises(UnlockLensError, match="shapes differ"):
        FirstTokenReference(ref).measures(_logits(n=3, vocab=10))
    with pytest.raises(UnlockLensError, match=r"\[n, vocab\]"):
        FirstTokenReference(ref[0])
