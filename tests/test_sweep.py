"""``unlock-lens sweep`` on the organisms (chain-s -> chain-m) with a small grid.

A cell's numbers equal the pipeline's own pack (``build_pack``) steered by a full prefill and
scored by SciPy; an interrupted sweep resumes to the same table as an uninterrupted one,
scoring only the cells left; bad grids are refused in one line before any model loads.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import entropy as scipy_entropy
from typer.testing import CliRunner

from unlock_lens.errors import UnlockLensError
from unlock_lens.resumable import read_rows as read_cells
from unlock_lens.sweep import run as sweep_module
from unlock_lens.sweep.run import (
    SweepGrid,
    SweepSettings,
    layer_sets,
    load_pair,
    run_sweep,
)

SETTINGS = SweepSettings(n_key=16, n_align=64, n_eval=16)
GRID = SweepGrid(layers=("single", "all"), ranks=(4, 16), alphas=(0.25, 1.0), n_random=3)
runner = CliRunner()


@pytest.fixture(scope="module")
def pair():
    return load_pair("chain-s", "chain-m", n_key=16, n_align=64, n_eval=16)


@pytest.fixture(scope="module")
def full_run(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep_full")
    return out, run_sweep(GRID, SETTINGS, out, pair=pair, progress=False)


def _numbers(table):
    return table.drop(columns=["seconds"]).reset_index(drop=True)


def test_layer_sets():
    assert layer_sets("single", 3) == [("L0", [0]), ("L1", [1]), ("L2", [2])]
    assert layer_sets("loo", 3) == [("all but L0", [1, 2]), ("all but L1", [0, 2]), ("all but L2", [0, 1])]
    assert layer_sets("bands:2", 4) == [("L0-1", [0, 1]), ("L1-2", [1, 2]), ("L2-3", [2, 3])]
    assert layer_sets("bands:2:2", 4) == [("L0-1", [0, 1]), ("L2-3", [2, 3])]
    assert layer_sets("1-2", 4) == [("L1-2", [1, 2])] and layer_sets("2+0", 4) == [("L0+2", [0, 2])]
    for bad in ("7", "0-9", "bands:5", "middle"):
        with pytest.raises(UnlockLensError):
            layer_sets(bad, 4)


def test_the_table_the_files_and_what_the_organisms_show(full_run):
    out, table = full_run
    # 5 layer sets (4 single + all) x 2 ranks x 2 alphas, in grid order
    assert len(table) == 20 and table["cell"].is_unique
    assert table["cell"].iloc[0] == "L0|last|svd|r4|a0.25" and table["cell"].iloc[-1] == "all|last|svd|r16|a1"
    assert {p.name for p in out.iterdir()} >= {"cells.jsonl", "sweep.csv", "sweep.json", "report.html"}
    summary = json.loads((out / "sweep.json").read_text())
    direct = summary["direct"]
    # the organisms' CoT (STEP) first token is far from the direct prompt's: KL > 5 nats unsteered;
    # steering all layers by the target's own key at alpha 1 reaches it, and so does the transferred key
    every = table[(table.layer_set == "all") & (table.alpha == 1.0)]
    assert direct["kl"] > 5 and direct["top1_agree"] == 0
    assert (every["native_kl"] < 0.1).all() and (every["key_kl"] < 0.1).all()
    assert (every["key_kl"] < every["random_kl_mean"]).all()
    assert (table["random_kl_min"] <= table["random_kl_mean"]).all()
    html = (out / "report.html").read_text()
    assert "plotly" in html and "random-mapped (mean)" in html and "native key" in html


def test_a_cell_equals_the_pipelines_pack_scored_by_scipy(pair, full_run):
    """Independent route: build_pack's maps, its steering restricted to the cell's layers, a full
    steered prefill (final_logits), KL and entropy by SciPy."""
    from unlock_lens.activations import Variant, final_logits
    from unlock_lens.align.layers import AlignSpec
    from unlock_lens.organisms import LOCKED, UNLOCKED
    from unlock_lens.unlock import build_pack

    _, table = full_run
    row = table[table.cell == "L1|last|svd|r16|a0.25"].iloc[0]
    pack = build_pack(pair.key, Variant(pair.source, LOCKED), Variant(pair.target, LOCKED),
                      pair.questions["align"], AlignSpec("svd", 16))
    steering = pack.steering(0.25, layers=[1])
    tok, qs = pair.target.tokenizer, pair.questions["eval"]
    ref = softmax(final_logits(pair.target, UNLOCKED.render_all(qs, tok)).double().numpy(), -1)
    q = softmax(final_logits(pair.target, LOCKED.render_all(qs, tok), steering=steering).double().numpy(), -1)
    kl = np.mean([scipy_entropy(a, b) for a, b in zip(ref, q, strict=True)])
    assert row.key_kl == pytest.approx(kl, abs=1e-3)
    assert row.key_entropy == pytest.approx(scipy_entropy(q, axis=-1).mean(), abs=1e-3)
    assert row.key_p_ref_top == pytest.approx(q[np.arange(len(q)), ref.argmax(-1)].mean(), abs=1e-4)


def test_an_interrupted_sweep_resumes_to_the_same_table(pair, full_run, tmp_path, monkeypatch):
    _, want = full_run
    real = sweep_module._measure_configurations
    calls = {"n": 0}

    def interrupted(model, cache, reference, steerings):
        calls["n"] += 1
        if calls["n"] == 8:  # the unsteered row, then 6 cells finish; the 7th is cut off
            raise KeyboardInterrupt
        return real(model, cache, reference, steerings)

    monkeypatch.setattr(sweep_module, "_measure_configurations", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(GRID, SETTINGS, tmp_path, pair=pair, progress=False)
    assert len(read_cells(tmp_path / "cells.jsonl")) == 6 and not (tmp_path / "sweep.csv").exists()
    with (tmp_path / "cells.jsonl").open("a") as f:  # a line cut mid-write is dropped
        f.write('{"cell": "L2|last|svd|r4|a0.2')
    monkeypatch.setattr(sweep_module, "_measure_configurations", real)
    counted = {"n": 0}

    def counting(model, cache, reference, steerings):
        counted["n"] += 1
        return real(model, cache, reference, steerings)

    monkeypatch.setattr(sweep_module, "_measure_configurations", counting)
    got = run_sweep(GRID, SETTINGS, tmp_path, pair=pair, progress=False)
    assert counted["n"] == 1 + 20 - 6  # the unsteered row and only the cells left
    assert [r["cell"] for r in read_cells(tmp_path / "cells.jsonl")] == list(want["cell"])  # none lost
    np.testing.assert_allclose(_numbers(got).select_dtypes("number"), _numbers(want).select_dtypes("number"),
                               atol=1e-6)
    assert list(got["cell"]) == list(want["cell"])
    assert list(got["key_below_all_random"]) == list(want["key_below_all_random"])


def test_another_grid_in_the_same_folder_is_refused(full_run, pair):
    out, _ = full_run
    with pytest.raises(UnlockLensError, match="other settings"):
        run_sweep(SweepGrid(layers=("all",), ranks=(4,), alphas=(0.5,), n_random=3), SETTINGS, out,
                  pair=pair, progress=False)


def test_an_extra_measure_gets_its_columns(pair, tmp_path):
    """The hook for more per-configuration measures (e.g. the likelihood fidelity)."""
    grid = SweepGrid(layers=("all",), ranks=(4,), alphas=(0.5, 1.0), n_random=3)
    seen = []

    def alpha_times_layers(steerings):
        seen.append(len(steerings))
        return [s.alpha * len(s.active_layers) for s in steerings]

    table = run_sweep(grid, SETTINGS, tmp_path, pair=pair, progress=False, report=False,
                      extra_measures={"toy": alpha_times_layers})
    assert list(table["key_toy"]) == [2.0, 4.0] and list(table["random_toy_mean"]) == [2.0, 4.0]
    assert seen == [4, 4]  # the key and the 3 random-mapped directions of each cell


@pytest.mark.parametrize(("args", "message"), [
    (["--alphas", ""], "--alphas: the list is empty"),
    (["--alphas", "0.1,nan"], "finite"),
    (["--ranks", "200"], "--ranks [200]"),
    (["--layers", "all,5"], "do not exist"),
    (["--layers", "middle"], "not a layer set"),
    (["--methods", "svd,pca"], "not alignment methods"),
    (["--source", "chain-s", "--target", "nope"], "nope"),
])
def test_bad_grids_are_refused_in_one_line_before_any_model_loads(args, message, monkeypatch, tmp_path, capsys):
    from unlock_lens.cli import main

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(sweep_module, "load_pair", no_loading)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--out", str(tmp_path / "s"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_cli_small_grid_with_a_restricted_vocabulary(tmp_path):
    from unlock_lens.cli import app

    out = tmp_path / "sweep"
    r = runner.invoke(app, ["sweep", "--out", str(out), "--layers", "all,bands:2:2", "--ranks", "8",
                            "--alphas", "0.5,1", "--n-random", "2", "--n-key", "16", "--n-align", "64",
                            "--n-eval", "16", "--vocab-k", "5"])
    assert r.exit_code == 0, r.output
    assert "6 cells" in r.output
    table = json.loads((out / "sweep.json").read_text())
    assert table["settings"]["vocab_k"] == 5 and len(table["rows"]) == 6
    assert "not full vocabulary" in (out / "report.html").read_text()


def test_the_fidelity_column_ranks_the_key_among_the_random_directions(pair, tmp_path):
    """--fidelity-tokens: per cell, F of the key and of each random-mapped direction on the
    native key's own continuations (same layers, same alpha). On the organisms the key carries
    the behaviour at alpha 1 (F near 1, above every random direction); the key's F equals the
    one pack_fidelity computes for the same maps, key and references."""
    from unlock_lens.diagnostics.fidelity import greedy_reference, likelihood_fidelity

    grid = SweepGrid(layers=("all",), ranks=(4,), alphas=(1.0,), n_random=5)
    settings = SweepSettings(n_key=16, n_align=64, n_eval=16, fidelity_tokens=8)
    table = run_sweep(grid, settings, tmp_path, pair=pair, progress=False, report=False)
    row = table.iloc[0]
    assert row.key_fidelity > 0.8 and row.key_fidelity_rank == 1 and row.key_fidelity_p == pytest.approx(1 / 6)
    assert row.random_fidelity_max < row.key_fidelity
    # the same number through likelihood_fidelity, one condition at a time
    sweeper = sweep_module.Sweeper(pair, settings, grid)
    maps = sweeper.bank("last", "svd", 4)
    cell = grid.cells(4)[0]
    key = sweeper._steering(sweep_module.map_directions(pair.key, maps), cell)
    native = sweeper._steering({t: pair.native.direction(t) for t in cell.layers}, cell)
    ref = greedy_reference(pair.target, sweeper.locked_prompts, name="native", steering=native, max_new_tokens=8)
    report = likelihood_fidelity(pair.target, ref, native=native, candidates={"key": key}, progress=False)
    assert report.summary(n_boot=10).set_index("condition").loc["key", "F"] == pytest.approx(row.key_fidelity, abs=1e-6)
