"""The transfer step on tensors: depth pairing, per-layer fits, key mapping (unlock_lens.align.layers)."""

from __future__ import annotations

import pytest
import torch

from unlock_lens.align import fit_alignment
from unlock_lens.align.layers import (
    AlignSpec,
    LayerPairing,
    depth_match,
    fit_layer_maps,
    map_directions,
)
from unlock_lens.errors import UnlockLensError


@pytest.mark.parametrize(
    ("n_src", "n_tgt"), [(30, 18), (18, 30), (1, 1), (1, 5), (5, 1), (7, 7), (2, 9), (28, 24)]
)
def test_depth_match_properties(n_src: int, n_tgt: int) -> None:
    m = depth_match(n_src, n_tgt)
    assert len(m) == n_tgt
    assert m[0] == 0
    assert m[-1] == (n_src - 1 if n_tgt > 1 else 0)
    assert all(a <= b for a, b in zip(m, m[1:], strict=False))
    assert all(0 <= s < n_src for s in m)


def test_depth_match_exact_cases() -> None:
    assert depth_match(7, 7) == list(range(7))
    # 29 * t // 17 by hand: t=1 -> 1, t=2 -> 3, t=3 -> 5, t=9 -> 15, t=16 -> 27
    assert depth_match(30, 18) == [0, 1, 3, 5, 6, 8, 10, 11, 13, 15, 17, 18, 20, 22, 23, 25, 27, 29]
    # 17 * t // 29: t=2 -> 1, t=15 -> 8, t=17 -> 9 (289 < 290), t=18 -> 10, t=28 -> 16
    # fmt: off
    assert depth_match(18, 30) == [
        0, 0, 1, 1, 2, 2, 3, 4, 4, 5, 5, 6, 7, 7, 8, 8, 9, 9, 10, 11, 11, 12, 12, 13, 14, 14,
        15, 15, 16, 17,
    ]
    # fmt: on
    assert depth_match(3, 5) == [0, 0, 1, 1, 2]
    assert depth_match(4, 1) == [0]


@pytest.mark.parametrize(("n_src", "n_tgt"), [(0, 3), (3, 0), (-1, 2), (2.0, 3), (True, 3)])
def test_depth_match_bad_input(n_src: object, n_tgt: object) -> None:
    with pytest.raises(UnlockLensError, match=">= 1"):
        depth_match(n_src, n_tgt)  # type: ignore[arg-type]


def test_pairing_by_depth_restricts_and_orders_layers():
    pairing = LayerPairing.by_depth(30, 18, [17, 0, 4])
    assert pairing.target_layers == [0, 4, 17]
    assert dict(pairing.source_of) == {0: 0, 4: 6, 17: 29}
    assert pairing.source_layers == [0, 6, 29]
    pairing.require_source(range(30))
    with pytest.raises(UnlockLensError, match=r"source layers \[6, 29\].*extract the key at all layers"):
        pairing.require_source([0, 1])


def test_spec_resolves_the_centring_rule_once():
    class Key:
        def __init__(self, aggregator):
            self.aggregator = aggregator

    assert AlignSpec().for_key(Key("pca")).centered is True
    assert AlignSpec().for_key(Key("mean")).centered is False
    assert AlignSpec(centered=False).for_key(Key("pca")).centered is False  # explicit wins
    rec = AlignSpec("cca", 4, True, 0.25, {"reg": 0.1, "obj": object()}).record()
    assert rec == {"method": "cca", "rank": 4, "centered": True, "holdout": 0.25, "fit_kwargs": {"reg": 0.1},
                   "data": "last", "max_pairs": None, "data_seed": 0}


def _captures(n=40, s_layers=3, t_layers=5, d_s=12, d_t=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    H_s = torch.randn(n, s_layers, d_s, generator=g)
    W = torch.randn(s_layers, d_s, d_t, generator=g)
    pairing = LayerPairing.by_depth(s_layers, t_layers)
    H_t = torch.stack([H_s[:, pairing.source_of[t]] @ W[pairing.source_of[t]] for t in range(t_layers)], 1)
    return H_s, H_t + 0.01 * torch.randn(H_t.shape, generator=g), pairing, W


def test_fit_layer_maps_reads_the_paired_columns():
    H_s, H_t, pairing, W = _captures()
    maps = fit_layer_maps(H_s, H_t, pairing, AlignSpec("ridge", centered=False, fit_kwargs={"alpha": 1e-6}))
    assert sorted(maps) == [0, 1, 2, 3, 4]
    for t, m in maps.items():
        s = pairing.source_of[t]
        assert (m.source_layer, m.target_layer) == (s, t)
        # each map recovers the generating map of its own source layer, not a neighbour's
        x = torch.randn(7, 12)
        torch.testing.assert_close(m.transform(x), x @ W[s], atol=0.05, rtol=0.05)
        ref = fit_alignment(H_s[:, s], H_t[:, t], method="ridge", alpha=1e-6)
        torch.testing.assert_close(m.transform(x), ref.transform(x))


def test_fit_layer_maps_refuses_captures_of_other_layers():
    H_s, H_t, pairing, _ = _captures()
    with pytest.raises(UnlockLensError, match="capture those"):
        fit_layer_maps(H_s[:, :2], H_t, pairing, AlignSpec())
    with pytest.raises(UnlockLensError, match=r"\[n, layers, d\]"):
        fit_layer_maps(H_s[:, 0], H_t, pairing, AlignSpec())


def test_map_directions_from_a_key_or_a_mapping():
    H_s, H_t, pairing, W = _captures()
    maps = fit_layer_maps(H_s, H_t, pairing, AlignSpec("svd", rank=10))
    key = {s: torch.randn(12, generator=torch.Generator().manual_seed(s)) for s in range(3)}

    class Key:
        def direction(self, layer):
            return key[layer]

    a, b = map_directions(key, maps), map_directions(Key(), maps)
    for t in range(5):
        torch.testing.assert_close(a[t], b[t])
        torch.testing.assert_close(a[t], maps[t].transform(key[pairing.source_of[t]]))
    zero = {s: torch.zeros(12) for s in range(3)}
    with pytest.raises(UnlockLensError, match="larger rank"):
        map_directions(zero, maps)


def test_a_new_alignment_method_is_one_registration(tiny_models, monkeypatch):
    """Extension scenario: a method registered in one place runs through every fitting path."""
    from unlock_lens.align import base
    from unlock_lens.align.base import LayerMap, register_method
    from unlock_lens.unlock import Unlock

    monkeypatch.setattr(base, "ALIGNMENT_METHODS", dict(base.ALIGNMENT_METHODS))
    monkeypatch.setattr(base, "_RANK_FREE", set(base._RANK_FREE))

    @register_method("lstsq", uses_rank=False)
    def fit_lstsq(X_src, X_tgt, rank=None, centered=False):
        """Plain least squares, no centring (the minimum-norm solution)."""
        W = torch.linalg.lstsq(X_src.double(), X_tgt.double()).solution.float()
        d_s, d_t = W.shape
        return LayerMap(torch.eye(d_s), W, torch.eye(d_t), torch.zeros(d_s), torch.zeros(d_t),
                        method="lstsq", rank=min(d_s, d_t), centered=False)

    H_s, H_t, pairing, W = _captures(n=60)
    maps = fit_layer_maps(H_s, H_t, pairing, AlignSpec("lstsq"))
    for t, m in maps.items():
        assert m.method == "lstsq"
        torch.testing.assert_close(m.core, W[pairing.source_of[t]], atol=0.02, rtol=0.02)
    # the whole pipeline takes it by name
    pipe = Unlock(source=tiny_models["qwen2"], target=tiny_models["llama"], method="lstsq")
    questions = [f"Tom has {a} apples and buys {a + 2} more. How many?" for a in range(10)]
    pack = pipe.run(questions[:5], questions[5:])
    assert {m.method for m in pack.maps.values()} == {"lstsq"}
    assert pack.alignment["method"] == "lstsq"
