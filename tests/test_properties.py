"""Property-based checks (hypothesis) of the key, alignment and steering math on random,
degenerate and hostile inputs: a clear UnlockLensError or a finite, documented result."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from unlock_lens.align import fit_alignment
from unlock_lens.errors import UnlockLensError
from unlock_lens.masterkey import aggregate_differences
from unlock_lens.steer import Steering, edit_residual

FAST = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
METHODS = ["svd", "procrustes", "cca", "ridge"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _matrix(seed: int, n: int, d: int, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(n, d, generator=g) * 3
    if kind == "rank1":
        return torch.randn(n, 1, generator=g) @ torch.randn(1, d, generator=g)
    if kind == "constant":
        return torch.randn(1, d, generator=g).expand(n, d).clone()
    if kind == "zero":
        return torch.zeros(n, d)
    if kind == "huge":
        return torch.randn(n, d, generator=g) * 1e4
    raise ValueError(kind)


KINDS = ["gaussian", "rank1", "constant", "zero", "huge"]


def _finite_tensors(layer_map) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in layer_map.to_tensors().values())


# ---- alignment -----------------------------------------------------------------------------


@FAST
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 12),
    d_src=st.integers(1, 9),
    d_tgt=st.integers(1, 9),
    rank_choice=st.sampled_from(["one", "max", "mid"]),
    method=st.sampled_from(METHODS),
    centered=st.booleans(),
    kinds=st.tuples(st.sampled_from(KINDS), st.sampled_from(KINDS)),
    dtype=st.sampled_from(DTYPES),
)
def test_fit_alignment_any_shape_rank_and_degeneracy_is_finite(
    seed, n, d_src, d_tgt, rank_choice, method, centered, kinds, dtype
):
    X = _matrix(seed, n, d_src, kinds[0]).to(dtype)
    Y = _matrix(seed + 1, n, d_tgt, kinds[1]).to(dtype)
    limit = min(n, d_src, d_tgt)
    rank = {"one": 1, "max": limit, "mid": max(1, limit // 2)}[rank_choice]
    fitted = fit_alignment(X, Y, method=method, rank=rank, centered=centered)
    # the map itself is always finite float32; degenerate fits give a zero (not NaN) map
    assert _finite_tensors(fitted)
    assert all(t.dtype == torch.float32 for t in fitted.to_tensors().values())
    v = torch.randn(3, d_src, generator=torch.Generator().manual_seed(seed)).to(dtype)
    out = fitted.transform(v)
    assert out.shape == (3, d_tgt) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # metrics are NaN only where documented: a zero denominator (no target variance / norm /
    # no energy in the fitted activations)
    Y32 = Y.float()
    for name in ("train_r2",):
        if math.isnan(fitted.metrics[name]):
            assert float((Y32 - Y32.mean(0)).square().sum()) == 0.0
    if math.isnan(fitted.metrics["train_relative_error"]):
        assert float(Y32.norm()) == 0.0


@FAST
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 8),
    d=st.integers(1, 6),
    bad=st.sampled_from([float("nan"), float("inf"), -float("inf")]),
    side=st.sampled_from(["X_src", "X_tgt"]),
)
def test_fit_alignment_refuses_non_finite(seed, n, d, bad, side):
    X, Y = _matrix(seed, n, d, "gaussian"), _matrix(seed + 1, n, d, "gaussian")
    target = X if side == "X_src" else Y
    target[seed % n, seed % d] = bad
    with pytest.raises(UnlockLensError, match=f"{side} has 1 non-finite"):
        fit_alignment(X, Y, rank=1)


@FAST
@given(n=st.integers(2, 8), d=st.integers(1, 6), over=st.integers(1, 5))
def test_fit_alignment_rank_bounds(n, d, over):
    X, Y = _matrix(0, n, d, "gaussian"), _matrix(1, n, d, "gaussian")
    with pytest.raises(UnlockLensError, match="exceeds the limit"):
        fit_alignment(X, Y, rank=min(n, d) + over)
    with pytest.raises(UnlockLensError, match="rank must be >= 1"):
        fit_alignment(X, Y, rank=1 - over)


def test_fit_alignment_empty_and_single_row():
    with pytest.raises(UnlockLensError, match="at least 2"):
        fit_alignment(torch.zeros(0, 4), torch.zeros(0, 4), rank=1)
    with pytest.raises(UnlockLensError, match="at least 2"):
        fit_alignment(torch.ones(1, 4), torch.ones(1, 4), rank=1)
    with pytest.raises(UnlockLensError, match="widths must be >= 1"):
        fit_alignment(torch.zeros(3, 0), torch.zeros(3, 2), rank=1)
    with pytest.raises(UnlockLensError, match="rank must be an int"):
        fit_alignment(torch.ones(3, 2), torch.ones(3, 2), rank=1.5)


def test_svd_full_rank_on_identical_sides_is_a_projection_even_if_rank_deficient():
    X = _matrix(3, 10, 6, "rank1")
    W = fit_alignment(X, X, rank=6).weight
    assert torch.isfinite(W).all()
    v = X[0]  # in the row space: kept
    torch.testing.assert_close(v @ W, v, atol=1e-3 * float(v.norm()), rtol=0)


# ---- master key aggregation ----------------------------------------------------------------


@FAST
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 10),
    layers=st.integers(1, 3),
    d=st.integers(1, 8),
    dtype=st.sampled_from(DTYPES),
)
def test_mean_key_is_the_mean_in_float32(seed, n, layers, d, dtype):
    diffs = torch.randn(n, layers, d, generator=torch.Generator().manual_seed(seed)).to(dtype)
    key = aggregate_differences(diffs, "mean")
    assert key.shape == (layers, d) and key.dtype == torch.float32
    torch.testing.assert_close(key.double(), diffs.double().mean(0), atol=1e-5, rtol=1e-5)
    assert torch.equal(aggregate_differences(diffs, "mean"), key)  # deterministic


@FAST
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 10),
    layers=st.integers(1, 3),
    d=st.integers(1, 8),
    dtype=st.sampled_from(DTYPES),
)
def test_pca_key_is_a_unit_vector_agreeing_with_the_mean(seed, n, layers, d, dtype):
    g = torch.Generator().manual_seed(seed)
    diffs = (torch.randn(layers, d, generator=g) + torch.randn(n, layers, d, generator=g)).to(dtype)
    centred = diffs.float() - diffs.float().mean(0)
    assume(bool((centred.flatten(1).norm(dim=0) > 0).all()))
    assume(all(float(torch.linalg.svdvals(centred[:, j])[0]) > 1e-3 for j in range(layers)))
    key = aggregate_differences(diffs, "pca")
    assert key.dtype == torch.float32 and torch.isfinite(key).all()
    torch.testing.assert_close(key.norm(dim=-1), torch.ones(layers), atol=1e-4, rtol=0)
    assert ((key * diffs.float().mean(0)).sum(-1) >= -1e-6).all()


@FAST
@given(seed=st.integers(0, 10_000), n=st.integers(2, 10), d=st.integers(1, 8),
       zero=st.booleans())
def test_constant_differences(seed, n, d, zero):
    row = torch.zeros(d) if zero else torch.randn(d, generator=torch.Generator().manual_seed(seed))
    diffs = row.expand(n, 2, d).clone()
    mean = aggregate_differences(diffs, "mean")  # documented finite result: the difference itself
    torch.testing.assert_close(mean, row.expand(2, d), atol=1e-6, rtol=1e-6)
    with pytest.raises(UnlockLensError, match="do not vary across prompts"):
        aggregate_differences(diffs, "pca")
    if zero:  # a zero key cannot steer: refused where it would be used
        with pytest.raises(UnlockLensError, match="zero"):
            Steering({0: mean[0]})


@pytest.mark.parametrize(
    ("diffs", "aggregator", "message"),
    [
        (torch.zeros(0, 2, 4), "mean", "no differences"),
        (torch.zeros(3, 4), "mean", r"must be \[n, layers, d\]"),
        (torch.ones(1, 2, 4), "pca", "at least 2 prompts"),
        (torch.tensor([[[1.0, float("inf")]]]), "mean", "NaN/inf"),
        (torch.tensor([[[float("nan"), 1.0]]]).half(), "mean", "NaN/inf"),
        (torch.ones(2, 1, 3), "median", "unknown aggregator"),
    ],
)
def test_aggregate_bad_input(diffs, aggregator, message):
    with pytest.raises(UnlockLensError, match=message):
        aggregate_differences(diffs, aggregator)


# ---- steering edit -------------------------------------------------------------------------


NORMS = ["rotate", "unit", "resid", "raw"]


@FAST
@given(
    seed=st.integers(0, 10_000),
    shape=st.sampled_from([(5,), (3, 5), (2, 3, 5), (1, 1, 1, 5), (4, 1)]),
    alpha=st.floats(-5, 5, allow_nan=False, allow_infinity=False),
    normalisation=st.sampled_from(NORMS),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    scale=st.sampled_from([0.0, 1e-3, 1.0, 1e3]),
)
def test_edit_is_finite_keeps_dtype_and_obeys_its_formula(seed, shape, alpha, normalisation,
                                                         dtype, scale):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(*shape, generator=g) * scale).to(dtype)
    r = torch.randn(shape[-1], generator=g)
    out = edit_residual(h, r, alpha, normalisation)
    assert out.shape == h.shape and out.dtype == dtype and torch.isfinite(out).all()
    h32, r_hat = h.float(), r / r.norm()
    tol = {"atol": 1e-2 * max(1.0, scale), "rtol": 1e-2} if dtype != torch.float32 else {
        "atol": 1e-4 * max(1.0, scale), "rtol": 1e-4}
    if normalisation == "unit":
        torch.testing.assert_close(out.float(), (h32 + alpha * r_hat).to(dtype).float(), **tol)
    elif normalisation == "raw":
        torch.testing.assert_close(out.float(), (h32 + alpha * r).to(dtype).float(), **tol)
    elif normalisation == "rotate":
        # norm preserved wherever the turned vector does not cancel (h_hat + a r_hat != 0)
        h_hat = h32 / h32.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        ok = (h_hat + alpha * r_hat).norm(dim=-1) > 1e-2
        torch.testing.assert_close(out.float().norm(dim=-1)[ok], h32.norm(dim=-1)[ok], **tol)
        if scale == 0.0:
            assert (out == 0).all()  # a zero state stays zero


@FAST
@given(seed=st.integers(0, 10_000), normalisation=st.sampled_from(NORMS),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_alpha_zero_is_bit_exact(seed, normalisation, dtype):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(3, 7, generator=g).to(dtype)
    out = edit_residual(h, torch.randn(7, generator=g), 0.0, normalisation)
    assert torch.equal(out, h) and out is not h


@FAST
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.01, 0.99))
def test_negative_alpha_turns_away(seed, alpha):
    """alpha < 0 (documented): the state turns away from r, i.e. the capability is removed."""
    g = torch.Generator().manual_seed(seed)
    h, r = torch.randn(6, 8, generator=g), torch.randn(8, generator=g)
    r_hat = r / r.norm()

    def cos(x):
        return (x @ r_hat) / x.norm(dim=-1)

    assert (cos(edit_residual(h, r, -alpha)) < cos(h) + 1e-6).all()
    assert (cos(edit_residual(h, r, alpha)) > cos(h) - 1e-6).all()
    # and a positive then equal negative unit edit cancels
    back = edit_residual(edit_residual(h, r, alpha, "unit"), r, -alpha, "unit")
    torch.testing.assert_close(back, h, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("h", "r", "alpha", "normalisation", "message"),
    [
        (torch.ones(2, 4), torch.ones(5), 0.1, "rotate", "does not fit"),
        (torch.ones(2, 4), torch.ones(2, 4), 0.1, "rotate", "does not fit"),
        (torch.tensor(1.0), torch.ones(1), 0.1, "rotate", "does not fit"),
        (torch.ones(2, 4), torch.tensor([1.0, float("nan"), 0, 0]), 0.1, "rotate", "NaN/inf"),
        (torch.ones(2, 4), torch.zeros(4), 0.1, "unit", "zero"),
        (torch.ones(2, 4), torch.ones(4), float("nan"), "rotate", "alpha must be finite"),
        (torch.ones(2, 4), torch.ones(4), float("inf"), "rotate", "alpha must be finite"),
        (torch.ones(2, 4), torch.ones(4), 0.1, "sideways", "unknown normalisation"),
    ],
)
def test_edit_bad_input(h, r, alpha, normalisation, message):
    with pytest.raises(UnlockLensError, match=message):
        edit_residual(h, r, alpha, normalisation)


def test_raw_allows_a_zero_direction_as_documented():
    h = torch.randn(2, 4)
    assert torch.equal(edit_residual(h, torch.zeros(4), 0.5, "raw"), h)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": float("nan")}, "alpha must be finite"),
        ({"directions": {}}, "at least one layer"),
        ({"directions": torch.ones(4)}, r"\[n_layers, d_model\]"),
        ({"directions": {0: torch.ones(2, 4)}}, "1-D"),
        ({"directions": {0: torch.full((4,), float("inf"))}}, "finite"),
    ],
)
def test_steering_bad_input(kwargs, message):
    args = {"directions": {0: torch.ones(4)}, **kwargs}
    with pytest.raises(UnlockLensError, match=message):
        Steering(**args)
