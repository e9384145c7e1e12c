"""`unlock-lens reproduce`: the recipes run end to end (dry run) on tiny random models of the
same architectures as the hub ids they stand in for, and the grid's capture-once-and-slice
steerings equal the plain `Unlock(protocol="paper")` pipeline at every grid point."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from unlock_lens import Unlock, load_model
from unlock_lens.cli import main
from unlock_lens.errors import UnlockLensError
from unlock_lens.random_models import build_random_model
from unlock_lens.reproduce import GridPoint, grid_steerings, load_recipe, recipe_names

RECIPES = ["qwen1.5-14b-to-7b-cot", "qwen1.5-7b-to-14b-cot", "qwen3-4b-math-to-14b-base"]
ARCH = {"qwen1.5": "qwen2", "qwen3": "qwen3"}
SHAPES = {"source": (64, 3), "source_unlocked": (64, 3), "target": (48, 4), "post_trained": (48, 4)}


def cli(args: list[str]) -> int:
    """Exit code of ``unlock-lens ARGS`` (typer exits 0 through SystemExit)."""
    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_list_names_every_recipe(capsys):
    assert recipe_names() == sorted(RECIPES)
    assert cli(["reproduce", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in RECIPES)
    assert "Qwen3-14B-Base" in listed


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Per recipe: hub id -> a tiny random model of its architecture, in the role's shape."""
    root = tmp_path_factory.mktemp("repro_models")
    out = {}
    for name in RECIPES:
        recipe = load_recipe(name)
        arch = ARCH[name.split("-")[0]]
        out[name] = {}
        for seed, (role, hub_id) in enumerate(sorted(recipe.models.items())):
            d, layers = SHAPES[role]
            out[name][hub_id] = str(build_random_model(root / f"{name}_{role}", arch, d_model=d,
                                                       n_layers=layers, seed=seed, n_ctx=4096))
    return out


@pytest.mark.parametrize("name", RECIPES)
def test_dry_run_writes_the_paper_table(name, tiny, tmp_path, capsys):
    recipe = load_recipe(name)
    out = tmp_path / "out"
    args = ["reproduce", name, "--dry-run", "--out", str(out), "--backend", "torch"]
    for hub_id, local in tiny[name].items():
        args += ["--model", f"{hub_id}={local}"]
    assert cli(args) == 0
    table = (out / "table.md").read_text()
    assert "dry run" in table and "dev-selected" in table and "best of grid on test" in table
    for s in recipe.sets:
        pub = recipe.published[s]
        assert f"| {s} | 3 |" in table
        assert f"{pub['direct']:.1f} / {pub['unlock']:.1f}" in table  # published numbers beside ours
    grid = pd.read_csv(out / "grid.csv")
    n_points = 4  # dry-run grid: n in {4, 6} x rank in {2, 8}
    assert (grid["split"] == "dev").sum() == n_points
    for s in recipe.sets:
        test_rows = grid[grid["split"] == s]
        assert len(test_rows) == n_points
    run = json.loads((out / "run.json").read_text())
    assert run["backend"] == "torch" and run["protocol"] == "paper"
    assert sorted(run["rank_clamped"]) == ["n=4 k=8 a=0.1 mean", "n=6 k=8 a=0.1 mean"]
    assert set(run["models"].values()) == set(tiny[name].values())
    outputs = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    baselines = 3 if "post_trained" in recipe.models else 2
    assert len(outputs) == 3 * n_points + len(recipe.sets) * 3 * (n_points + baselines)
    if recipe.contrast == "model":  # the authors test the target with the CoT prompt here
        steered = next(r for r in outputs if r["condition"] == "steered")
        assert steered["prompt"].endswith("Answer: Let's think step by step.\n")
    assert "table ->" in capsys.readouterr().out


def test_grid_steerings_equal_the_plain_pipeline(tiny):
    name = "qwen1.5-14b-to-7b-cot"
    ids = tiny[name]
    recipe = load_recipe(name)
    source, target = load_model(ids[recipe.models["source"]]), load_model(ids[recipe.models["target"]])
    pipe = Unlock(source, target, protocol="paper")
    questions = [f"Tom has {i} apples and buys {i + 3} more. How many now?" for i in range(8)]
    points = [GridPoint(4, 2, 0.1, "mean"), GridPoint(8, 3, 0.2, "pca")]
    grid = grid_steerings(pipe, points, questions)
    for p in points:
        plain = Unlock(source, target, protocol="paper", rank=p.rank, aggregator=p.aggregator, alpha=p.alpha)
        pack = plain.align(plain.extract(questions[-p.n:]), questions[-p.n:])
        expected = pack.target_directions()
        assert sorted(grid[p].directions) == sorted(expected) == [0, 1, 2, 3]
        for t, r in expected.items():
            torch.testing.assert_close(grid[p].directions[t], r, atol=1e-5, rtol=1e-4)
        assert grid[p].alpha == p.alpha


def test_bad_recipe_input_is_one_clear_error(tmp_path):
    with pytest.raises(UnlockLensError, match="unknown recipe 'qwen-nope'.*shipped"):
        load_recipe("qwen-nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n')
    with pytest.raises(UnlockLensError, match="malformed"):
        load_recipe(bad)
    assert cli(["reproduce", "qwen1.5-14b-to-7b-cot", "--model", "no-equals-sign", "--dry-run"]) == 2
