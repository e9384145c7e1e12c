"""Sweep frames from real ablation runs (tiny random models) drawn by the figures, and the
analysis scripts' progress over a sweep's forward passes."""

import pytest

import unlock_lens.diagnostics.ablations as abl
from analysis.rank_sweep import native_row
from unlock_lens import plots
from unlock_lens.activations import Variant
from unlock_lens.align.layers import AlignSpec
from unlock_lens.masterkey import extract_masterkey
from unlock_lens.prompts import COT, DIRECT

SEEDS = (0, 1, 2)


@pytest.fixture()
def setup(tiny_models, questions):
    src, tgt = tiny_models["qwen2"], tiny_models["qwen2-deep"]  # 3 x d64 -> 5 x d96
    key = extract_masterkey(Variant(src, DIRECT), Variant(src, COT), questions[:4])
    return abl.prepare_ablation(key, Variant(src, DIRECT), Variant(tgt, DIRECT), questions[:6],
                                questions[6:], spec=AlignSpec(rank=4), alpha=0.5)


def test_rank_sweep_frame_draws_ridge_once_and_one_random_band(setup):
    frame = abl.rank_sweep(setup, ranks=(2, 4), methods=("svd", "ridge"), seeds=SEEDS)
    fig = plots.rank_sweep_figure(frame)
    assert sorted(t.name for t in fig.data) == [
        "direct (unsteered)", "random (3 seeds): mean", "random (3 seeds): mean ± std",
        "ridge (no rank)", "svd"]
    traces = {t.name: t for t in fig.data}
    ridge_kl = frame.query("condition == 'key' and method == 'ridge'").kl_mean
    assert ridge_kl.nunique() == 1  # the library repeats the one ridge cell at every rank
    assert list(traces["ridge (no rank)"].y) == pytest.approx([ridge_kl.iloc[0]] * 2)
    assert list(traces["svd"].x) == [2, 4]
    direct = frame.query("condition == 'direct'").kl_mean.item()
    assert list(traces["direct (unsteered)"].y) == pytest.approx([direct, direct])


def test_progress_counts_every_steered_pass(setup, monkeypatch, capsys):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    abl.rank_sweep(setup, ranks=(2, 4), methods=("svd", "ridge"), seeds=SEEDS, progress=True)
    bars = capsys.readouterr().err
    # svd at two ranks (2 x (key + 3 seeds) = 8 configurations), ridge once (4)
    assert "rank sweep (steered configurations): 100%" in bars and "8/8" in bars and "4/4" in bars


def test_native_row_scores_the_targets_own_key(setup, tiny_models, questions):
    tgt = tiny_models["qwen2-deep"]
    native = extract_masterkey(Variant(tgt, DIRECT), Variant(tgt, COT), questions[:4])
    row = native_row(setup, native, 0.5).iloc[0]
    directions = {t: native.direction(t) for t in setup.target_layers}
    kl, logp = setup.score(setup.steered_logits(directions, setup.target_layers, 0.5))
    assert row.condition == "native" and row.kl_mean == pytest.approx(kl.mean().item())
    assert row.logp_mean == pytest.approx(logp.mean().item())
    assert row.kl_sem == pytest.approx(kl.std().item() / len(kl) ** 0.5)
