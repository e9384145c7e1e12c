"""Slow: the real cross-family pair SmolLM2-135M-Instruct -> Gemma-3-270M, offline (GGUF).

Asserts only what holds by construction (shapes, disjoint prompt sets, finite numbers, the
target's own mean difference added at its last block moving it toward its CoT-prompted
distribution); the paper-default steering (rotate at every layer) with the native and the
transferred key is printed and reported, whatever it shows. (Measured: Gemma's own key at
alpha 0.2 on all 18 layers moves it *away* from its CoT distribution, KL 1.36 -> 4.38.)
"""

import json

import pytest
import torch

from unlock_lens.activations import Variant
from unlock_lens.diagnostics.distribution_shift import control_conditions, first_token_shift
from unlock_lens.evaluate.datasets import default_data_dir, load_dataset, split_problems
from unlock_lens.masterkey import extract_masterkey
from unlock_lens.prompts import get_format
from unlock_lens.steer import Steering
from unlock_lens.unlock import Unlock

pytestmark = pytest.mark.slow


def _real(name):
    from unlock_lens.errors import UnlockLensError
    from unlock_lens.models import load_model

    try:
        return load_model(name)
    except UnlockLensError as err:
        pytest.skip(f"{name} not available offline: {err}")


@pytest.mark.skipif(default_data_dir() is None, reason="needs ../shared/data")
def test_smollm2_cot_key_steers_gemma(capsys):
    src, tgt = _real("smollm2-135m-instruct"), _real("gemma-3-270m")
    parts = split_problems(load_dataset("gsm8k", "train"), {"key": 0.4, "align": 0.4, "dev": 0.2}, seed=0)
    key_q = [p.question for p in parts["key"][:48]]
    align_q = [p.question for p in parts["align"][:96]]
    eval_q = [p.question for p in parts["dev"][:24]]
    assert not ({*key_q} & {*align_q} or {*key_q} & {*eval_q} or {*align_q} & {*eval_q})

    pipe = Unlock(source=src, target=tgt, rank=16)
    assert pipe.locked_format.chat and not pipe.target_format.chat  # instruct vs base formats
    key = pipe.extract(key_q)
    assert key.directions.shape == (30, 576) and torch.isfinite(key.directions).all()
    pack = pipe.align(key, align_q)
    dirs = pack.target_directions()
    assert sorted(dirs) == list(range(18)) and all(v.shape == (640,) for v in dirs.values())

    locked, unlocked = pipe.target_format, get_format("cot")
    native = extract_masterkey(Variant(tgt, locked), Variant(tgt, unlocked), key_q)
    last = tgt.cfg.n_layers - 1
    conditions = {
        "direct": None,
        # adding the mean difference to the final block's output maps the mean direct-prompt
        # state onto the mean CoT-prompt state: the one edit that must move toward CoT
        "native last-layer raw a=1": Steering({last: native.directions[last]}, 1.0, "raw"),
        "native a=0.05": Steering(native.directions, 0.05),
        "native a=0.2": Steering(native.directions, 0.2),
    }
    conditions.update(control_conditions(pack, 0.05, seeds=(0, 1, 2)))
    rows = {r["condition"]: r for r in first_token_shift(tgt, eval_q, locked, unlocked, conditions)}
    with capsys.disabled():
        print("\n" + json.dumps(rows, indent=1))
    assert all(torch.isfinite(torch.tensor(v)) for r in rows.values() for v in r.values()
               if isinstance(v, float))
    # the target's own CoT key at its last layer moves it toward its CoT-prompted distribution
    assert rows["native last-layer raw a=1"]["kl_to_unlocked"] < rows["direct"]["kl_to_unlocked"]


@pytest.mark.skipif(default_data_dir() is None, reason="needs ../shared/data")
def test_real_pair_script_end_to_end(tmp_path):
    """``analysis.real_pair`` at reduced size, SmolLM2 -> Gemma: files, disjoint sets, finite numbers."""
    import pandas as pd

    from analysis import real_pair

    _real("smollm2-135m-instruct"), _real("gemma-3-270m")
    argv = ["--source", "smollm2-135m-instruct", "--target", "gemma-3-270m", "--n-key", "24",
            "--n-align", "48", "--n-dev", "4", "--n-eval", "6", "--ranks", "2,8",
            "--alphas", "0.05,0.2", "--max-new-tokens", "24", "--threads", "2", "--engine", "hf",
            "--out", str(tmp_path)]
    real_pair.main(argv)
    out = tmp_path / "smollm2-135m-instruct_to_gemma-3-270m"
    run = json.loads((out / "run.json").read_text())
    assert run["n"] == {"key": 24, "align": 48, "dev_multiarith": 4, "dev_svamp": 4,
                        "eval_multiarith": 6, "eval_svamp": 6}
    qs = real_pair.question_sets(real_pair.parse_args(argv))
    sets = {"key": set(qs["key"]), "align": set(qs["align"])}
    for name in ("multiarith", "svamp"):
        sets[f"dev_{name}"] = {p.question for p in qs["dev"][name]}
        sets[f"eval_{name}"] = {p.question for p in qs["eval"][name]}
    names = sorted(sets)
    assert all(not (sets[a] & sets[b]) for i, a in enumerate(names) for b in names[i + 1 :])
    assert len(set(run["hashes"].values())) == len(run["hashes"])

    selection = pd.read_csv(out / "selection.csv")
    keys = selection[selection.condition == "key"]
    assert set(keys.method) == {"svd", "procrustes", "cca"} and set(keys["rank"]) == {2, 8}
    assert keys.kl_mean.notna().all() and keys.kl_mean.nunique() > 1  # the grid discriminates
    best = keys.loc[keys.kl_mean.idxmin()]
    assert (run["selected"]["method"], run["selected"]["rank"]) == (best["method"], int(best["rank"]))
    assert run["selected"]["alpha"] in (0.05, 0.2) and run["selected"]["native_alpha"] in (0.05, 0.2)
    # by construction: the native mean shift at the last block moves Gemma toward its CoT prompt
    sanity = pd.read_csv(out / "dev_sanity.csv").iloc[0]
    assert sanity.kl_mean < run["dev_direct_kl"]

    for name in ("multiarith", "svamp"):
        table = pd.read_csv(out / f"summary_{name}.csv")
        whole = table[table.seed.isna()].set_index("condition")
        assert set(whole.index) == {"direct", "cot-prompt", "steered", "native-key", "random"}
        assert (whole.n == 6).all()
        # accuracies are counts over n (a rate from anything else would not be)
        assert ((table.accuracy * table.n).round(9) % 1 == 0).all() and table.first_token_entropy.notna().all()
        assert (table.first_token_entropy > 0).all() and (table.mean_tokens <= 24).all()
        # the CoT prompt changes the first-token distribution Gemma generates from
        assert whole.loc["cot-prompt", "first_token_entropy"] != whole.loc["direct", "first_token_entropy"]
    text = real_pair.report(tmp_path, tmp_path / "real_pair.md", png=False).read_text()
    assert (out / "rank_sweep_kl.html").is_file()
    assert "smollm2-135m-instruct → gemma-3-270m" in text and "### svamp: evaluation" in text


@pytest.mark.skipif(default_data_dir() is None, reason="needs ../shared/data")
def test_real_pair_data_script_end_to_end(tmp_path):
    """``analysis.real_pair_data`` at toy size, Gemma -> SmolLM2: the pruning and the dev pick
    follow their stated rules, every evaluation condition covers every problem, the report renders."""
    import pandas as pd

    from analysis import real_pair_data

    _real("smollm2-135m-instruct"), _real("gemma-3-270m")
    argv = ["--source", "gemma-3-270m", "--target", "smollm2-135m-instruct", "--n-key", "4", "--n-align", "4",
            "--n-dev", "2", "--n-eval", "3", "--ranks", "2,4", "--methods", "svd,cca", "--alphas", "0.01,0.1",
            "--max-pairs", "50", "--seeds", "2", "--dev-tokens", "8", "--max-new-tokens", "8", "--threads", "2",
            "--out", str(tmp_path), "--md", str(tmp_path / "dk.md")]
    real_pair_data.main(argv)
    out = tmp_path / "gemma-3-270m_to_smollm2-135m-instruct"
    grid = pd.read_csv(out / "grid.csv")
    keyed = grid[grid.condition == "transferred key"]
    assert set(zip(keyed.kind, keyed.method, keyed["rank"], strict=True)) == {
        (k, m, r) for k in ("last", "tokens+last") for m in ("svd", "cca") for r in (2, 4)}
    assert keyed.kl_to_cot.nunique() > 1 and keyed.mean_cos_to_native.between(-1, 1).all()
    unsteered_p = grid[grid.condition == "unsteered"].p_cot_top.iloc[0]
    dev = pd.read_csv(out / "dev_generation.csv")
    candidates = dev[dev.condition == "transferred key"]
    assert len(candidates) == 4  # every (kind, alpha) reaches generation
    for _, cand in candidates.iterrows():
        # the pruned candidate at (kind, alpha): lowest KL among cells that keep p(CoT top)
        cells = keyed[(keyed.kind == cand.kind) & (keyed.alpha == cand.alpha)]
        keep = cells[cells.p_cot_top >= unsteered_p]  # else: the lowest KL, flagged
        best = (keep if len(keep) else cells).loc[(keep if len(keep) else cells).kl_to_cot.idxmin()]
        assert cand.keeps_p_cot_top == bool(len(keep))
        assert (best.method, best["rank"]) == (cand.method, cand["rank"])
    picks = pd.read_csv(out / "picks.csv").set_index("condition")
    for name, rows in (("native key", dev[dev.condition == "native key"]), ("last", dev[dev.kind == "last"])):
        top = rows.sort_values(["healthy_cot", "alpha"], ascending=[False, True]).iloc[0]
        assert picks.loc[name, "alpha"] == top.alpha
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.condition) == {"direct", "native key", "last", "tokens+last", "random-mapped last",
                                      "random-mapped tokens+last", "cot-prompt"}
    assert (summary[summary.dataset == "all"].n == 6).all() and (summary[summary.dataset != "all"].n == 3).all()
    assert ((summary.accuracy * summary.n).round(9) % 1 == 0).all() and (summary.mean_tokens <= 8).all()
    # the summary rebuilt from the finished conditions alone is the same table
    real_pair_data.main([*argv, "--summarize"])
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), summary)
    # chosen conditions from the picks on disk (maps refitted from picks.csv) give the same outputs
    redo = ("eval_last.jsonl", "eval_random-mapped_tokens_last.jsonl")
    before = {name: (out / name).read_text() for name in redo}
    grid_written = (out / "grid.csv").stat().st_mtime_ns
    for name in redo:
        (out / name).unlink()
    real_pair_data.main([*argv, "--reuse-dev", "--conditions", "last,random-mapped tokens+last"])
    assert {name: (out / name).read_text() for name in redo} == before
    assert (out / "grid.csv").stat().st_mtime_ns == grid_written  # the dev stage did not run again
    with pytest.raises(SystemExit, match="unknown \\['tokens'\\]"):
        real_pair_data.main([*argv, "--reuse-dev", "--conditions", "tokens"])
    # the confirmation on fresh problems reads the same picks and run settings
    from analysis import confirm_signature
    md = confirm_signature.main(["--source", "gemma-3-270m", "--target", "smollm2-135m-instruct", "--n", "6",
                                 "--max-new-tokens", "4", "--runs", str(tmp_path), "--md", str(tmp_path / "sig.md")])
    rows = [line for line in md.read_text().splitlines() if line.startswith("| ") and not line.startswith("| condition")]
    pick = picks.loc["tokens+last"]
    assert [r.split(" | ")[0] for r in rows] == [
        "| direct", f"| native key (α {picks.loc['native key', 'alpha']:g})", f"| tokens+last key (α {pick.alpha:g})",
        f"| random-mapped tokens+last (α {pick.alpha:g})"]
    assert f"{pick.method} rank {int(pick['rank'])}" in md.read_text() and "the hypothesis **" in md.read_text()
    text = real_pair_data.report(real_pair_data.parse_args(["--out", str(tmp_path), "--md", str(tmp_path / "dk.md")])
                                 ).read_text()
    assert "gemma-3-270m → smollm2-135m-instruct" in text and "**Evaluation**" in text
    assert (tmp_path / "data_kinds_cosine.html").is_file()
