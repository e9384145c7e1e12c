"""First-token measures against a reference distribution, over the full vocabulary or a small
restricted one.

:func:`first_token_measures` gives, per prompt, what a sweep reports for one configuration's
next-token logits against the reference's (e.g. the target's CoT-prompted distribution):

- ``kl``: KL(reference || configuration) [nats];
- ``entropy``: the configuration's entropy [nats];
- ``p_ref_top``: the probability the configuration puts on the reference's most likely token;
- ``top1_agree``: 1 where the configuration's most likely token is the reference's.

With ``k`` given, KL and entropy are those of *bucketed* distributions: the union ``S`` of the
reference rows' top-``k`` tokens (:func:`top_k_support`, one set for all prompts) plus one
bucket holding the rest's mass. Bucketing merges outcomes, so both can only go down:
``0 <= KL_full - KL_S`` (the data-processing inequality) and ``0 <= H_full - H_S <= q_rest
log(V - |S|)``; with ``S`` the whole vocabulary both are exact. ``p_ref_top`` and
``top1_agree`` are exact at any ``k``. What restriction saves is the per-configuration work
over the vocabulary: a logsumexp outside the support and an argmax, where the full measures
take a logsumexp, a softmax and two products (the reference's side is computed once), and a per-configuration result of
``n x (|S| + 1)`` numbers instead of ``n x V``. ``benchmarks/bench_restricted_vocab.py``
measures the error and the speed-up on the real pair; a figure or table that claims
full-vocabulary KL must not use it (the default everywhere is ``k=None``: full vocabulary).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from unlock_lens.errors import UnlockLensError

if TYPE_CHECKING:
    from unlock_lens.diagnostics.readout import ReadoutStats

#: measure name -> what it is, in the order a table shows them
MEASURES: dict[str, str] = {
    "kl": "KL(reference || configuration) [nats]",
    "entropy": "entropy of the configuration [nats]",
    "p_ref_top": "p(reference's top token)",
    "top1_agree": "top-1 agreement with the reference",
}

def top_k_support(reference: Float[Tensor, "n vocab"], k: int) -> Int[Tensor, " m"]:
    """The sorted union over rows of each row's ``k`` most likely tokens."""
    if not 1 <= k <= reference.shape[-1]:
        raise UnlockLensError(f"restricted vocabulary: k must be in [1, vocab={reference.shape[-1]}], got {k}")
    return torch.unique(reference.topk(k, dim=-1).indices)


def bucket_log_probs(
    logits: Float[Tensor, "n vocab"], support: Int[Tensor, " m"]
) -> tuple[Float[Tensor, "n m_plus_1"], Float[Tensor, " n"]]:
    """log p over ``support``, then the log of the rest's mass (``-inf`` when the rest is
    empty); and the rows' logsumexp.

    The rest's log mass is the logsumexp of the logits outside the support (one pass over the
    vocabulary), not ``log(1 - sum_S p)``: a rest below float32's resolution of 1 (a confident
    configuration) keeps its size instead of cancelling to 0, which would make the KL infinite.
    """
    logits = logits.float()
    inside = logits.gather(-1, support.expand(logits.shape[0], -1))
    rest = logits.index_fill(-1, support, -torch.inf).logsumexp(-1, keepdim=True)
    lse = torch.logaddexp(inside.logsumexp(-1, keepdim=True), rest)
    return torch.cat([inside, rest], -1) - lse, lse[:, 0]


def _xlogy_sum(log_p: Tensor, log_q: Tensor) -> Tensor:
    """sum p (log p - log q) with 0 log 0 = 0 (buckets of zero mass contribute nothing)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def bucketed_kl(ref_buckets: Tensor, buckets: Tensor) -> Float[Tensor, " n"]:
    """KL between two :func:`bucket_log_probs` results over the same support."""
    return _xlogy_sum(ref_buckets, buckets)


def bucketed_entropy(buckets: Tensor) -> Float[Tensor, " n"]:
    """Entropy of a :func:`bucket_log_probs` result."""
    return -_xlogy_sum(buckets, torch.zeros_like(buckets))


class FirstTokenReference:
    """A reference distribution per prompt and how configurations are measured against it.

    ``k=None``: full vocabulary (exact); ``k``: the restricted vocabulary of the module
    docstring. Build it once per prompt set (the reference's side of every measure is computed
    here, once); :meth:`measures` then scores any number of configurations.
    """

    def __init__(self, logits: Float[Tensor, "n vocab"], k: int | None = None) -> None:
        if logits.ndim != 2:
            raise UnlockLensError(f"reference logits must be [n, vocab], got shape {tuple(logits.shape)}")
        self.shape, self.k = tuple(logits.shape), k
        self.top: Int[Tensor, " n"] = logits.argmax(-1)
        self.support: Int[Tensor, " m"] | None = None
        if k is None:
            log_p = torch.log_softmax(logits.float(), -1)
            self._p = log_p.exp()
            self._neg_entropy = torch.xlogy(self._p, self._p).sum(-1)
        else:
            self.support = top_k_support(logits, k)
            self._ref_buckets = bucket_log_probs(logits, self.support)[0]

    def measures(self, logits: Float[Tensor, "n vocab"]) -> dict[str, Float[Tensor, " n"]]:
        """Per prompt: ``kl``, ``entropy``, ``p_ref_top``, ``top1_agree`` (see :data:`MEASURES`)."""
        if tuple(logits.shape) != self.shape:
            raise UnlockLensError(f"logit shapes differ: reference {self.shape} vs {tuple(logits.shape)}")
        logits = logits.float()
        if self.support is None:
            lse = logits.logsumexp(-1)
            # KL = sum p log p - sum p log q and H = lse - sum q z: one product-sum each
            kl = self._neg_entropy - (self._p * logits).sum(-1) + lse
            ent = lse - (torch.softmax(logits, -1) * logits).sum(-1)
        else:
            buckets, lse = bucket_log_probs(logits, self.support)
            kl, ent = bucketed_kl(self._ref_buckets, buckets), bucketed_entropy(buckets)
        p_top = (logits.gather(-1, self.top[:, None])[:, 0] - lse).exp()
        agree = (logits.argmax(-1) == self.top).float()
        return {"kl": kl, "entropy": ent, "p_ref_top": p_top, "top1_agree": agree}

    def readout_measures(self, stats: ReadoutStats) -> dict[str, Float[Tensor, " n"]]:
        """:meth:`measures` from a full-vocabulary read-out
        (:func:`~unlock_lens.diagnostics.readout.readout_configurations` against
        ``self.probabilities`` at ``self.top[:, None]``), no logits held."""
        if self.support is not None:
            raise UnlockLensError("a read-out is full-vocabulary: measure a restricted reference on logits")
        return {"kl": stats.kl(self._neg_entropy), "entropy": stats.entropy(),
                "p_ref_top": stats.log_q()[:, 0].exp(), "top1_agree": (stats.argmax == self.top).float()}

    @property
    def probabilities(self) -> Float[Tensor, "n vocab"]:
        """The reference's next-token probabilities (full vocabulary only)."""
        if self.support is not None:
            raise UnlockLensError("a restricted reference keeps no full-vocabulary probabilities")
        return self._p


def first_token_measures(
    reference: Float[Tensor, "n vocab"], logits: Float[Tensor, "n vocab"], *, k: int | None = None
) -> dict[str, Float[Tensor, " n"]]:
    """:meth:`FirstTokenReference.measures` for one configuration (build the reference once
    when measuring many)."""
    return FirstTokenReference(reference, k).measures(logits)
