"""The ``contrasts`` alignment data (align/contrasts.py): maps fitted on other axes' key pairs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from sklearn.linear_model import Ridge

from unlock_lens.align import (
    GramStats,
    add_contrast_rows,
    contrast_pairs,
    fit_contrast_maps,
    fit_layer_maps_from_stats,
    leave_one_out,
)
from unlock_lens.align.layers import AlignSpec, LayerPairing, map_directions
from unlock_lens.alignment_data import parse_data
from unlock_lens.errors import UnlockLensError
from unlock_lens.masterkey import MasterKey
from unlock_lens.model_info import ModelInfo
from unlock_lens.pack import CapabilityPack

AXES = [f"axis{i}" for i in range(7)]
HELD_OUT = "axis3"
L_S, L_T = 3, 2
PAIRING = LayerPairing.by_depth(L_S, L_T)  # target 0 <- source 0, target 1 <- source 2


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _key(directions: torch.Tensor, axis: str, model: str) -> MasterKey:
    n_layers, d = directions.shape
    return MasterKey(
        directions.float(),
        list(range(n_layers)),
        ModelInfo(model, n_layers, d, "raw"),
        capability=axis,
    )


def _planted(d_s: int = 20, d_t: int = 24, orthogonal: bool = False, seed: int = 0):
    """Keys of 7 axes; at each used source layer they lie in a 6-dim subspace (so the 6 other
    axes span the held-out one's), with norms from 0.5 to 8; the target's native keys are
    ``source key @ R_t``, R_t a random linear (or orthogonal) map per target layer."""
    g = _gen(seed)
    src = torch.randn(len(AXES), L_S, d_s, generator=g)  # layer 1 is read by no target layer
    R = {}
    for t, s in PAIRING.source_of.items():
        basis = torch.randn(6, d_s, generator=g)
        src[:, s] = torch.randn(len(AXES), 6, generator=g) @ basis
        src[:, s] *= torch.linspace(0.5, 8.0, len(AXES))[:, None] / src[:, s].norm(
            dim=1, keepdim=True
        )
        R[t] = (
            torch.linalg.qr(torch.randn(d_s, d_t, generator=g))[0]
            if orthogonal
            else torch.randn(d_s, d_t, generator=g) / d_s**0.5
        )
    tgt = torch.stack([src[:, PAIRING.source_of[t]] @ R[t] for t in range(L_T)], dim=1)
    keys = {a: (_key(src[i], a, "src"), _key(tgt[i], a, "tgt")) for i, a in enumerate(AXES)}
    return keys, R


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def _rows(keys, t: int):
    """The other axes' rows at target layer t, each pair over its source key's norm (numpy)."""
    X = np.stack(
        [keys[a][0].direction(PAIRING.source_of[t]).double().numpy() for a in AXES if a != HELD_OUT]
    )
    Y = np.stack([keys[a][1].direction(t).double().numpy() for a in AXES if a != HELD_OUT])
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return X / n, Y / n


def _token_stats(d_s: int, d_t: int, seed: int = 1, n: int = 400, mean: float = 0.0):
    """Token pairs from a map M unrelated to the keys' R: {t: GramStats}, and the rows."""
    g = _gen(seed)
    out, rows = {}, {}
    for t in PAIRING.target_layers:
        X = torch.randn(n, d_s, generator=g) + mean
        Y = X @ torch.randn(d_s, d_t, generator=g) + 0.1 * torch.randn(n, d_t, generator=g) + mean
        out[t], rows[t] = GramStats.from_dense(X, Y), (X.double().numpy(), Y.double().numpy())
    return out, rows


# ---- (a) a planted map, against least squares and SciPy's orthogonal Procrustes ---------------


# ridge's default alpha (1% of the mean energy) shrinks the keys' weak directions (cosine 0.90
# here): a small alpha recovers the planted map
@pytest.mark.parametrize(
    ("method", "kwargs"), [("svd", {}), ("cca", {}), ("ridge", {"alpha": 1e-6})]
)
def test_held_out_key_is_carried_by_the_other_axes_map(method: str, kwargs: dict) -> None:
    keys, R = _planted()
    maps = fit_contrast_maps(
        *leave_one_out(keys, HELD_OUT), PAIRING, AlignSpec(method, rank=6, fit_kwargs=kwargs)
    )
    mapped = map_directions(keys[HELD_OUT][0], maps)
    tokens_only = fit_layer_maps_from_stats(
        _token_stats(20, 24)[0], PAIRING, AlignSpec("svd", rank=20)
    )
    from_tokens = map_directions(keys[HELD_OUT][0], tokens_only)
    for t in PAIRING.target_layers:
        planted = keys[HELD_OUT][0].direction(PAIRING.source_of[t]) @ R[t]
        assert _cos(mapped[t], planted) > 0.99
        assert abs(_cos(from_tokens[t], planted)) < 0.5
        assert maps[t].source_layer == PAIRING.source_of[t] and maps[t].target_layer == t
        assert maps[t].metrics["contrast_rows"] == 6.0


def test_svd_contrast_map_is_the_least_squares_solution() -> None:
    keys, _ = _planted()
    maps = fit_contrast_maps(*leave_one_out(keys, HELD_OUT), PAIRING, AlignSpec("svd", rank=6))
    for t in PAIRING.target_layers:
        X, Y = _rows(keys, t)
        W = np.linalg.lstsq(X, Y, rcond=None)[0]  # minimum-norm: zero off the keys' span
        np.testing.assert_allclose(maps[t].weight.double().numpy(), W, atol=1e-4 * np.abs(W).max())


def test_procrustes_contrast_map_matches_scipy_on_the_held_out_key() -> None:
    keys, R = _planted(d_s=20, d_t=20, orthogonal=True)
    maps = fit_contrast_maps(
        *leave_one_out(keys, HELD_OUT), PAIRING, AlignSpec("procrustes", rank=6)
    )
    mapped = map_directions(keys[HELD_OUT][0], maps)
    for t in PAIRING.target_layers:
        X, Y = _rows(keys, t)
        R_scipy, _ = orthogonal_procrustes(X, Y)
        key = keys[HELD_OUT][0].direction(PAIRING.source_of[t]).double().numpy()
        np.testing.assert_allclose(
            mapped[t].double().numpy(), key @ R_scipy, atol=1e-4 * np.abs(key).max()
        )
        assert maps[t].metrics["scale"] == pytest.approx(1.0, abs=1e-4)  # R is a rotation


def test_contrasts_alone_clamp_the_rank_to_the_number_of_axes_with_a_warning() -> None:
    keys, _ = _planted()
    with pytest.warns(
        UserWarning, match=r"rank 16 > 6 key pairs \(contrasts alone\): clamped to 6"
    ):
        maps = fit_contrast_maps(*leave_one_out(keys, HELD_OUT), PAIRING, AlignSpec("svd", rank=16))
    assert {m.rank for m in maps.values()} == {6}


def test_normalise_weighs_each_axis_the_same() -> None:
    keys, _ = _planted()
    pairs = contrast_pairs(*leave_one_out(keys, HELD_OUT), PAIRING)
    raw = contrast_pairs(*leave_one_out(keys, HELD_OUT), PAIRING, normalise=False)
    for t, (X, Y) in pairs.items():
        np.testing.assert_allclose(X.norm(dim=1).numpy(), 1.0, rtol=1e-6)
        ratio = raw[t][0].norm(dim=1)  # the source norms, 0.5 .. 8 (axis 3 left out)
        assert float(ratio.max() / ratio.min()) > 10
        torch.testing.assert_close(
            Y * ratio[:, None], raw[t][1]
        )  # one factor per pair: still linear


def test_contrast_maps_make_a_pack_that_round_trips(tmp_path) -> None:
    keys, _ = _planted()
    maps = fit_contrast_maps(*leave_one_out(keys, HELD_OUT), PAIRING, AlignSpec("svd", rank=6))
    pack = CapabilityPack(
        key=keys[HELD_OUT][0],
        maps=maps,
        target=ModelInfo("tgt", L_T, 24, "raw"),
        alignment={**AlignSpec("svd", rank=6, data="contrasts").record()},
    )
    loaded = CapabilityPack.load(pack.save(tmp_path / "pack.safetensors"))
    for t, r in pack.target_directions().items():
        torch.testing.assert_close(loaded.target_directions()[t], r)
    assert loaded.maps[0].metrics["contrast_rows"] == 6.0
    assert loaded.alignment["data"] == "contrasts"


# ---- (b) leave-one-axis-out ------------------------------------------------------------------


def test_held_out_key_never_enters_the_fit() -> None:
    keys, _ = _planted()
    sources, targets = leave_one_out(keys, HELD_OUT)
    assert [k.capability for k in sources] == [a for a in AXES if a != HELD_OUT]
    assert [k.capability for k in targets] == [a for a in AXES if a != HELD_OUT]
    poisoned = dict(keys)
    poisoned[HELD_OUT] = tuple(
        dataclasses.replace(k, directions=torch.full_like(k.directions, float("nan")))
        for k in keys[HELD_OUT]
    )
    spec = AlignSpec("svd", rank=6)
    clean = fit_contrast_maps(*leave_one_out(keys, HELD_OUT), PAIRING, spec)
    held = fit_contrast_maps(*leave_one_out(poisoned, HELD_OUT), PAIRING, spec)
    for t in PAIRING.target_layers:
        assert torch.equal(clean[t].weight, held[t].weight)
    with pytest.raises(UnlockLensError, match="NaN/inf"):  # it would have, had it been passed
        fit_contrast_maps(
            [p[0] for p in poisoned.values()], [p[1] for p in poisoned.values()], PAIRING, spec
        )


# ---- (c) with token pairs --------------------------------------------------------------------


def test_weight_zero_is_the_token_fit() -> None:
    keys, _ = _planted(d_s=16, d_t=16)
    tokens, _ = _token_stats(16, 16, mean=3.0)
    for spec in (
        AlignSpec("svd", rank=16, centered=False),
        AlignSpec("cca", rank=8),
        AlignSpec("ridge", centered=True),
    ):
        alone = fit_layer_maps_from_stats(tokens, PAIRING, spec)
        mixed = fit_contrast_maps(
            *leave_one_out(keys, HELD_OUT), PAIRING, spec, token_stats=tokens, weight=0.0
        )
        for t in PAIRING.target_layers:
            torch.testing.assert_close(mixed[t].weight, alone[t].weight, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(
                mixed[t].source_mean, alone[t].source_mean, atol=1e-6, rtol=1e-6
            )


def test_growing_weight_moves_the_fit_to_the_planted_map() -> None:
    keys, R = _planted(d_s=16, d_t=16)
    tokens, _ = _token_stats(16, 16)
    spec = AlignSpec("svd", rank=16, centered=False)
    cosines = []
    for weight in (0.0, 0.1, 1.0, 10.0, 1e4):  # the keys' weakest direction needs a large weight
        maps = fit_contrast_maps(
            *leave_one_out(keys, HELD_OUT), PAIRING, spec, token_stats=tokens, weight=weight
        )
        mapped = map_directions(keys[HELD_OUT][0], maps)
        cosines.append(
            [
                _cos(mapped[t], keys[HELD_OUT][0].direction(PAIRING.source_of[t]) @ R[t])
                for t in PAIRING.target_layers
            ]
        )
    for t in range(L_T):
        path = [c[t] for c in cosines]
        assert all(b > a for a, b in zip(path, path[1:], strict=False)), path
        assert path[0] < 0.7 and path[-1] > 0.99, path  # 0.7: a random map's cosine, 16 dims


# ridge centres whatever spec.centered says: the weight's reference energy is the centred one too
@pytest.mark.parametrize(("method", "centered"), [("svd", False), ("svd", True), ("ridge", False)])
def test_mixed_fit_is_least_squares_on_the_stacked_rows(method: str, centered: bool) -> None:
    """The documented weighting, against numpy / scikit-learn: token rows (centred about their
    own mean when the fit centres) stacked over key rows scaled by c and g, the keys never
    centred."""
    keys, _ = _planted(d_s=16, d_t=16)
    tokens, rows = _token_stats(16, 16, mean=3.0)
    weight, alpha = 0.5, 50.0
    spec = AlignSpec(
        method, rank=16, centered=centered, fit_kwargs={"alpha": alpha} if method == "ridge" else {}
    )
    maps = fit_contrast_maps(
        *leave_one_out(keys, HELD_OUT), PAIRING, spec, token_stats=tokens, weight=weight
    )
    centres = centered or method == "ridge"
    for t in PAIRING.target_layers:
        Xt, Yt = rows[t]
        if centres:
            Xt, Yt = Xt - Xt.mean(0), Yt - Yt.mean(0)
        Xk, Yk = _rows(keys, t)
        c = np.sqrt(weight * (Xt**2).sum() / (Xk**2).sum())
        g = np.sqrt((Yt**2).sum() / (Xt**2).sum()) / np.sqrt((Yk**2).sum() / (Xk**2).sum())
        X, Y = np.vstack([Xt, c * Xk]), np.vstack([Yt, c * g * Yk])
        if method == "ridge":
            W = Ridge(alpha=alpha, fit_intercept=False).fit(X, Y).coef_.T
        else:
            W = np.linalg.lstsq(X, Y, rcond=None)[0]
        np.testing.assert_allclose(maps[t].weight.double().numpy(), W, atol=1e-4 * np.abs(W).max())
        if centres:
            np.testing.assert_allclose(maps[t].source_mean.numpy(), rows[t][0].mean(0), rtol=1e-5)
        assert maps[t].metrics["contrast_weight"] == weight


# ---- (d) bad input ---------------------------------------------------------------------------


def _other(keys):
    return leave_one_out(keys, HELD_OUT)


def test_bad_keys_are_refused_with_the_fix() -> None:
    keys, _ = _planted()
    src, tgt = _other(keys)
    spec = AlignSpec("svd", rank=4)
    cases = [
        ((src, tgt[:-1]), r"6 source keys but 5 target keys: pass one target"),
        ((src, tgt[1:] + tgt[:1]), r"different axes at the same position .*same axis order"),
        (
            (src[:2] + src[:1], tgt[:2] + tgt[:1]),
            r"axes \['axis0'\] appear more than once: give each key its axis name",
        ),
        (([], []), r"no keys given"),
        ((src[:1], tgt[:1]), r"at least 2 axes .*got 1"),
    ]
    short = _key(torch.randn(2, 20), "axis0", "src")  # a 2-layer source among 3-layer ones
    cases.append(
        (
            ([short] + src[1:], tgt),
            r"source keys come from different models .*pass keys of one source model",
        )
    )
    few = _key(torch.randn(1, 24), "axis0", "tgt")
    cases.append(((src, [few] + tgt[1:]), r"target keys come from different models"))
    for args, match in cases:
        with pytest.raises(UnlockLensError, match=match):
            fit_contrast_maps(*args, PAIRING, spec)
    with pytest.raises(
        UnlockLensError, match=r"need source layers \[2\].*extract the key at all layers"
    ):
        contrast_pairs([_key(torch.randn(2, 20), a, "s2") for a in AXES[:2]], tgt[:2], PAIRING)
    with pytest.raises(
        UnlockLensError, match=r"no direction at target layers \[1\].*at all layers"
    ):
        contrast_pairs(src[:2], [_key(torch.randn(1, 24), a, "t1") for a in AXES[:2]], PAIRING)


def test_bad_leave_one_out_and_mix_are_refused() -> None:
    keys, _ = _planted()
    with pytest.raises(UnlockLensError, match=r"'nope' is not among the keys .*pass one of them"):
        leave_one_out(keys, "nope")
    misfiled = {**keys, "axis0": keys["axis1"]}
    with pytest.raises(
        UnlockLensError, match=r"keys\['axis0'\] holds keys of axes \('axis1', 'axis1'\)"
    ):
        leave_one_out(misfiled, HELD_OUT)
    tokens, _ = _token_stats(20, 24)
    src, tgt = _other(keys)
    spec = AlignSpec("svd", rank=4)
    with pytest.raises(UnlockLensError, match=r"weight must be a finite number >= 0"):
        fit_contrast_maps(src, tgt, PAIRING, spec, token_stats=tokens, weight=-1.0)
    with pytest.raises(UnlockLensError, match=r"no statistics for target layers \[1\]"):
        fit_contrast_maps(src, tgt, PAIRING, spec, token_stats={0: tokens[0]})
    with pytest.raises(
        UnlockLensError, match=r"widths \(20, 24\) do not fit token statistics of widths \(16, 16\)"
    ):
        add_contrast_rows(
            GramStats.from_dense(torch.randn(5, 16), torch.randn(5, 16)),
            *contrast_pairs(src, tgt, PAIRING)[0],
            1.0,
        )
    with pytest.raises(
        UnlockLensError, match=r"'contrasts' is fitted from other axes' keys.*fit_contrast_maps"
    ):
        parse_data("tokens+contrasts")
