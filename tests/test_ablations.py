"""Ablation sweeps on tiny random models: correct cells, controls, and no repeated work."""

import math
from contextlib import contextmanager
from dataclasses import replace

import pandas as pd
import pytest
import torch

import unlock_lens.diagnostics.ablations as abl
from unlock_lens.activations import Variant, final_logits
from unlock_lens.align.layers import AlignSpec
from unlock_lens.distributions import kl_divergence
from unlock_lens.errors import UnlockLensError
from unlock_lens.masterkey import extract_masterkey
from unlock_lens.prompts import COT, DIRECT
from unlock_lens.steer import Steering

SEEDS = (0, 1, 2)


@contextmanager
def count_forwards(model):
    """Counts real forward passes through ``model`` (a torch hook on its embedding)."""
    counter = {"n": 0}
    handle = model.embed.register_forward_hook(lambda *_: counter.__setitem__("n", counter["n"] + 1))
    try:
        yield counter
    finally:
        handle.remove()


@pytest.fixture()
def pair(tiny_models):
    return tiny_models["qwen2"], tiny_models["qwen2-deep"]  # 3 x d64 -> 5 x d96


@pytest.fixture()
def key(pair, questions):
    src, _ = pair
    return extract_masterkey(Variant(src, DIRECT), Variant(src, COT), questions[:4])


def make_setup(pair, key, questions, **kwargs):
    src, tgt = pair
    kwargs.setdefault("alpha", 0.5)
    kwargs["spec"] = AlignSpec(rank=4, holdout=kwargs.pop("holdout", 0.0))
    return abl.prepare_ablation(key, Variant(src, DIRECT), Variant(tgt, DIRECT), questions[:6],
                                questions[6:], batch_size=16, **kwargs)


def test_proxy_scores_known_values():
    ref = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    same_kl, same_logp = abl.proxy_scores(ref, ref, abl.unlocked_tokens(ref, 2))
    assert same_kl.item() == pytest.approx(0.0, abs=1e-7)
    assert same_logp.item() == pytest.approx(math.log(0.9))
    other = torch.log(torch.tensor([[0.1, 0.1, 0.4, 0.4]]))
    kl, logp = abl.proxy_scores(ref, other, abl.unlocked_tokens(ref, 2))
    assert kl.item() == pytest.approx(float(kl_divergence(ref, other)))
    assert logp.item() == pytest.approx(math.log(0.2))
    with pytest.raises(UnlockLensError, match="top_m"):
        abl.unlocked_tokens(ref, 5)


@pytest.mark.filterwarnings("ignore:cached=False")
def test_full_prefill_sweeps_reuse_every_cacheable_pass(pair, key, questions, monkeypatch):
    """Without the prefix cache: prepare runs 2 captures + 2 logit passes; each cell runs
    exactly 1 + len(seeds) full steered prefills."""
    src, tgt = pair
    calls = {"capture": 0, "final_logits": 0, "fit": 0}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    from unlock_lens import activations

    monkeypatch.setattr(activations, "capture", spy("capture", activations.capture))
    monkeypatch.setattr(abl, "final_logits", spy("final_logits", abl.final_logits))
    from unlock_lens.align import layers

    monkeypatch.setattr(layers, "fit_alignment", spy("fit", layers.fit_alignment))
    n_t = tgt.cfg.n_layers
    per_cell = 1 + len(SEEDS)
    with count_forwards(src) as fs, count_forwards(tgt) as ft:
        setup = make_setup(pair, key, questions)
        assert (calls["capture"], calls["final_logits"], fs["n"], ft["n"]) == (2, 2, 1, 3)
        setup.cached = False

        expected_t = 3
        for sweep, n_cells in [
            (lambda: abl.single_layer_sweep(setup, layers=[0, 4], seeds=SEEDS), 2),
            (lambda: abl.leave_one_out_sweep(setup, seeds=()), n_t),  # no controls: 1 pass a cell
            (lambda: abl.band_sweep(setup, width=4, seeds=SEEDS), 2),
            (lambda: abl.alpha_sweep(setup, alphas=(0.1,), seeds=SEEDS), 1),
        ]:
            frame = sweep()
            expected_t += n_cells * (1 if (frame.condition == "random").sum() == 0 else per_cell)
            assert ft["n"] == expected_t
            assert (frame.condition == "key").sum() == n_cells
        # the default (svd, rank 4) maps were fitted once, for all four sweeps
        assert calls["fit"] == n_t

        # rank sweep: ranks capped at min(n=6, 64, 96) = 6; ridge ignores rank -> one cell
        frame = abl.rank_sweep(setup, ranks=(4, 64), methods=("svd", "ridge"), seeds=SEEDS)
        expected_t += (2 + 1) * per_cell
        assert ft["n"] == expected_t
        assert sorted(frame[(frame.condition == "key") & (frame.method == "svd")]["rank"]) == [4, 6]
        ridge = frame[(frame.condition == "key") & (frame.method == "ridge")]
        assert len(ridge) == 2 and ridge.kl_mean.nunique() == 1  # repeated, not recomputed
        assert calls["fit"] == n_t * (1 + 1 + 1)  # svd rank 4 reused; rank 6; ridge once

        frame = abl.method_sweep(setup, methods=("svd", "procrustes"), seeds=SEEDS)
        expected_t += 2 * per_cell
        assert ft["n"] == expected_t
        assert calls["fit"] == n_t * (3 + 1)  # only procrustes is new

    assert fs["n"] == 1 and calls["capture"] == 2  # never recaptured
    assert calls["final_logits"] == 2 + (expected_t - 3)  # one per steered pass, nothing else


def test_cached_sweeps_stack_each_sweep_in_one_forward(pair, key, questions, monkeypatch):
    """On the prefix cache: one prefix pass for all sweeps, two forwards once to check that the
    logits are a linear read-out of the final states, then one forward per sweep (its cells'
    keys and random controls stacked; 2 evaluation prompts = 1 batch), no full prefill."""
    _, tgt = pair
    scored = []
    real = abl.readout_configurations
    monkeypatch.setattr(abl, "readout_configurations",
                        lambda m, c, steerings, *a, **k: scored.append(len(steerings)) or real(m, c, steerings, *a, **k))
    setup = make_setup(pair, key, questions)
    monkeypatch.setattr(abl, "final_logits", None)  # any full prefill from here on would raise
    assert setup.uses_prefix_cache
    n_t, per_cell = tgt.cfg.n_layers, 1 + len(SEEDS)
    with count_forwards(tgt) as ft:
        abl.single_layer_sweep(setup, layers=[0, 4], seeds=SEEDS)
        assert ft["n"] == 1 + 2 + 1 and scored == [2 * per_cell]
        abl.leave_one_out_sweep(setup, seeds=())
        abl.band_sweep(setup, width=4, seeds=SEEDS)
        abl.alpha_sweep(setup, alphas=(0.1, 0.5), seeds=SEEDS)
        abl.rank_sweep(setup, ranks=(4, 64), methods=("svd", "ridge"), seeds=SEEDS)  # 2 calls
        abl.method_sweep(setup, methods=("svd", "procrustes"), seeds=SEEDS)
    assert scored == [2 * per_cell, n_t, 2 * per_cell, 2 * per_cell, 2 * per_cell, per_cell,
                      2 * per_cell]
    assert ft["n"] == 1 + 2 + len(scored)


def _numbers_equal(cached, full):
    """Same rows and labels; every logits-derived number within 1e-4."""
    assert list(cached.columns) == list(full.columns) and len(cached) == len(full)
    numeric = [c for c in cached.columns if c.startswith(("kl_", "logp_"))]
    assert numeric
    rest = [c for c in cached.columns if c not in numeric]
    pd.testing.assert_frame_equal(cached[rest], full[rest])
    diff = (cached[numeric] - full[numeric]).abs().to_numpy()
    assert diff.max() < 1e-4, diff.max()


@pytest.mark.filterwarnings("ignore:cached=False")
@pytest.mark.parametrize("arch", ["qwen2-deep", "gemma3"])
def test_every_sweep_on_the_cache_equals_full_prefills(tiny_models, questions, arch):
    """Each public sweep's table on the prefix cache equals the full-prefill table (1e-4)."""
    src, tgt = tiny_models["qwen2"], tiny_models[arch]
    key = extract_masterkey(Variant(src, DIRECT), Variant(src, COT), questions[:4])
    cached = abl.prepare_ablation(key, Variant(src, DIRECT), Variant(tgt, DIRECT), questions[:6],
                                  questions[2:], spec=AlignSpec(rank=4), alpha=0.5, batch_size=4)
    full = replace(cached, cached=False)
    assert cached.uses_prefix_cache and not full.uses_prefix_cache
    sweeps = {
        "single_layer": lambda s: abl.single_layer_sweep(s, seeds=(0, 1)),
        "leave_one_out": lambda s: abl.leave_one_out_sweep(s, seeds=(0,)),
        "band": lambda s: abl.band_sweep(s, width=2, seeds=(0,)),
        "alpha": lambda s: abl.alpha_sweep(s, alphas=(-0.3, 0.0, 0.5, 2.0), seeds=(0, 1)),
        "rank": lambda s: abl.rank_sweep(s, ranks=(1, 4), methods=("svd", "ridge"), seeds=(0,)),
        "method": lambda s: abl.method_sweep(s, methods=("svd", "procrustes", "cca"), seeds=(0,)),
    }
    for name, sweep in sweeps.items():
        a, b = sweep(cached), sweep(full)
        _numbers_equal(a, b)
        key_rows = a[a.condition == "key"]
        assert key_rows.kl_mean.nunique() > 1, name  # the cells differ


def test_rules_that_edit_the_prefix_fall_back_to_full_prefills(pair, key, questions):
    setup = make_setup(pair, key, questions, positions="prompt")
    assert not setup.uses_prefix_cache
    with pytest.warns(UserWarning, match="positions='prompt' also edits the prompt before its last "
                                         "token: scoring with one full steered prefill"):
        frame = abl.alpha_sweep(setup, alphas=(0.5,), seeds=())
    _, tgt = pair
    steered = final_logits(tgt, setup.direct_prompts,
                           steering=Steering(setup.directions(), 0.5, positions="prompt"))
    assert frame.kl_mean[0] == pytest.approx(float(kl_divergence(setup.ref_logits, steered).mean()), rel=1e-5)
    assert setup._prefix is None  # never built


def test_cells_match_a_direct_computation(pair, key, questions):
    """Against full steered prefills: 1e-5 absolute on the logits-derived numbers (the
    cached path agrees to float32 rounding, ~1e-7 here)."""
    setup = make_setup(pair, key, questions)
    _, tgt = pair
    frame = abl.single_layer_sweep(setup, layers=[2], seeds=SEEDS)
    assert list(frame.condition) == ["key", "random", "direct"]
    row = frame.iloc[0]
    assert row.layer == 2 and row.layers == "2" and row.method == "svd" and row["rank"] == 4

    dirs = setup.directions()
    direct_prompts = DIRECT.render_all(questions[6:], tgt.tokenizer)
    ref = final_logits(tgt, COT.render_all(questions[6:], tgt.tokenizer))
    steered = final_logits(tgt, direct_prompts, steering=Steering(dirs, 0.5, layers=[2]))
    kl = kl_divergence(ref, steered)
    assert row.kl_mean == pytest.approx(float(kl.mean()), rel=1e-5, abs=1e-5)
    assert row.kl_std == pytest.approx(float(kl.std()), rel=1e-4, abs=1e-5)
    assert row.n_questions == 2

    direct = frame[frame.condition == "direct"].iloc[0]
    assert direct.kl_mean == pytest.approx(float(kl_divergence(ref, final_logits(tgt, direct_prompts)).mean()), rel=1e-5, abs=1e-5)
    assert direct.kl_mean != pytest.approx(row.kl_mean)  # alpha 0.5 at one layer moves the logits

    rnd = frame[frame.condition == "random"].iloc[0]
    assert rnd.n_seeds == 3 and rnd.kl_std > 0
    per_seed = []
    for s in SEEDS:
        from unlock_lens.controls import random_like

        logits = final_logits(tgt, direct_prompts, steering=Steering(random_like(dirs, s), 0.5, layers=[2]))
        per_seed.append(float(kl_divergence(ref, logits).mean()))
    assert rnd.kl_mean == pytest.approx(sum(per_seed) / 3, rel=1e-5, abs=1e-5)
    assert rnd.kl_std == pytest.approx(float(torch.tensor(per_seed).std()), rel=1e-4, abs=1e-5)


def test_leave_one_out_and_bands_steer_the_right_layers(pair, key, questions):
    setup = make_setup(pair, key, questions)
    loo = abl.leave_one_out_sweep(setup, seeds=())
    assert list(loo[loo.condition == "key"].layers) == ["1,2,3,4", "0,2,3,4", "0,1,3,4", "0,1,2,4", "0,1,2,3"]
    assert "random" not in set(loo.condition)
    bands = abl.band_sweep(setup, width=3, stride=2, seeds=())
    key_rows = bands[bands.condition == "key"]
    assert list(key_rows.layers) == ["0,1,2", "2,3,4"]
    assert list(key_rows.band_start) == [0, 2] and list(key_rows.band_end) == [2, 4]
    with pytest.raises(UnlockLensError, match="width"):
        abl.band_sweep(setup, width=9)


def test_alpha_zero_equals_unsteered_and_sweeps_move(pair, key, questions):
    setup = make_setup(pair, key, questions)
    frame = abl.alpha_sweep(setup, alphas=(0.0, 2.0), seeds=SEEDS)
    key_rows = frame[frame.condition == "key"].set_index("alpha")
    direct = frame[frame.condition == "direct"].kl_mean.item()
    # alpha 0 is the unsteered last token on the prefix cache: the unsteered full prefill up
    # to float32 rounding (the read-out's KL = sum p log p - sum p z + lse cancels terms of
    # ~10 nats, so ~1e-6 of rounding)
    assert key_rows.loc[0.0, "kl_mean"] == pytest.approx(direct, rel=1e-5, abs=1e-5)
    assert key_rows.loc[2.0, "kl_mean"] != pytest.approx(direct, rel=1e-3)


def test_method_sweep_records_fit_quality(pair, key, questions):
    setup = make_setup(pair, key, questions, holdout=0.34)
    assert setup.rank_limit == 4  # 6 rows, 2 held out
    frame = abl.method_sweep(setup, methods=("svd", "cca"), rank=8, seeds=())
    rows = frame[frame.condition == "key"]
    assert list(rows["rank"]) == [4, 4]  # capped
    assert rows.heldout_r2.notna().all() and rows.train_r2.notna().all()
    # 4 training rows, rank 4: the fit interpolates its training rows and does worse held out
    assert (rows.train_r2 > 0.99).all() and (rows.heldout_r2 < rows.train_r2 - 0.01).all()


def test_prepare_validates(pair, key, questions):
    src, tgt = pair
    with pytest.raises(UnlockLensError, match="at least 2"):
        abl.prepare_ablation(key, Variant(src, DIRECT), Variant(tgt, DIRECT), questions[:1], questions)
    setup = make_setup(pair, key, questions)
    with pytest.raises(UnlockLensError, match="unknown alignment method"):
        setup.maps("nope")
    with pytest.raises(UnlockLensError, match="seeds repeat"):
        abl.alpha_sweep(setup, alphas=(0.1,), seeds=(1, 1, 2))


def test_sweep_frames_feed_the_figures(pair, key, questions):
    from unlock_lens import plots

    setup = make_setup(pair, key, questions)
    layer_fig = plots.layer_sweep_figure(abl.single_layer_sweep(setup, layers=[0, 4], seeds=SEEDS))
    assert len(layer_fig.data) == 4 and list(layer_fig.data[2].x) == [0, 4]
    band_fig = plots.layer_sweep_figure(abl.band_sweep(setup, width=4, seeds=()))
    assert band_fig.layout.xaxis.title.text == "band centre (target layer)"
    assert list(band_fig.data[0].x) == [1.5, 2.5]
    rank = abl.rank_sweep(setup, ranks=(2, 4), methods=("svd", "ridge"), seeds=SEEDS)
    rank_fig = plots.rank_sweep_figure(rank)
    assert sorted(t.name for t in rank_fig.data) == [
        "direct (unsteered)", "random (3 seeds): mean", "random (3 seeds): mean ± std",
        "ridge (no rank)", "svd"]
    alpha_fig = plots.alpha_sweep_figure(abl.alpha_sweep(setup, alphas=(0.1, 0.2), seeds=()))
    assert list(alpha_fig.data[0].x) == [0.1, 0.2]


def test_sweeps_show_a_bar_over_their_steered_passes(pair, key, questions, capsys):
    setup = make_setup(pair, key, questions)
    abl.single_layer_sweep(setup, layers=[0, 4], seeds=SEEDS, progress=True)
    err = capsys.readouterr().err
    passes = 2 * (1 + len(SEEDS))
    assert f"{passes}/{passes}" in err and "single_layer sweep" in err
