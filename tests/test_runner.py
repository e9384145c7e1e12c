import json
from collections import Counter

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from unlock_lens.artifacts import load_artifact
from unlock_lens.cli import app
from unlock_lens.errors import UnlockLensError
from unlock_lens.evaluate import (
    EvalResults,
    default_data_dir,
    load_jsonl,
    mcnemar_exact,
    paired_bootstrap_diff,
    shows_working,
)
from unlock_lens.evaluate.results import arithmetic_steps, degenerate
from unlock_lens.evaluate.runner import (
    Decoding,
    best_alpha,
    evaluate,
    select_alpha,
)
from unlock_lens.pack import CapabilityPack
from unlock_lens.prompts import COT_TRIGGER, PromptFormat
from unlock_lens.unlock import Unlock

KEY_Q = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "There are 12 birds on a tree and 4 fly away. How many are left?",
    "A train travels 60 miles per hour for 2 hours. How far does it go?",
    "Each box holds 7 pens. How many pens are in 3 boxes?",
]
ALIGN_Q = [f"Sara reads {a} pages a day for {b} days. How many pages does she read?"
           for a, b in [(3, 4), (10, 2), (7, 7), (12, 5), (9, 3), (20, 6), (4, 11), (15, 2)]]
DECODING = Decoding(max_new_tokens=6, batch_size=4)
ALPHAS = (0.5, 2.0)
SEEDS = (0, 1)


def _write_problems(path, items):
    path.write_text("".join(json.dumps({"id": i, "q": q, "a": a}) + "\n" for i, q, a in items))
    return load_jsonl(path, question_field="q", answer_field="a", id_field="id", name="toy")


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    items = [(f"e{i}", f"Ann has {i} cats and gets {i + 2} more. How many cats?", str(2 * i + 2))
             for i in range(5)]
    return _write_problems(tmp_path_factory.mktemp("data") / "eval.jsonl", items)


@pytest.fixture(scope="module")
def dev_problems(tmp_path_factory):
    items = [(f"d{i}", f"Bob walks {i} km then {i + 1} km. How far in total?", str(2 * i + 1))
             for i in range(4)]
    return _write_problems(tmp_path_factory.mktemp("dev") / "dev.jsonl", items)


@pytest.fixture(scope="module")
def pack(tiny_models):
    pipe = Unlock(source=tiny_models["qwen2"], target=tiny_models["qwen2-deep"], rank=4, alpha=0.5)
    return pipe.run(KEY_Q, ALIGN_Q)


@pytest.fixture(scope="module")
def results(tiny_models, pack, problems):
    return evaluate(
        tiny_models["qwen2-deep"], problems,
        conditions="direct,cot-prompt,steered,native-key,random", pack=pack, alphas=ALPHAS,
        seeds=SEEDS, key_questions=KEY_Q, decoding=DECODING,
    )


def _group_counts(rows):
    return Counter((r["condition"], r["alpha"], r["seed"]) for r in rows)


def test_every_problem_once_per_condition_alpha_and_seed(results, problems):
    ids = [p.id for p in problems]
    expected = {("direct", None, None), ("cot-prompt", None, None)}
    for a in ALPHAS:
        expected |= {("steered", a, None), ("native-key", a, None)}
        expected |= {("random", a, s) for s in SEEDS}
    groups = _group_counts(results.rows)
    assert set(groups) == expected and set(groups.values()) == {len(ids)}
    for key in expected:
        got = [r["problem_id"] for r in results.rows if (r["condition"], r["alpha"], r["seed"]) == key]
        assert got == ids  # paired by id, in problem order
    gold = {p.id: p.answer for p in problems}
    assert all(r["gold"] == gold[r["problem_id"]] for r in results.rows)
    assert all(0 <= r["n_tokens"] <= DECODING.max_new_tokens for r in results.rows)


def test_prompts_follow_the_formats(results, pack, problems):
    locked = PromptFormat.from_dict(pack.target_format)
    by_cond = {(r["condition"], r["problem_id"]): r["prompt"] for r in results.rows}
    for p in problems:
        assert by_cond[("direct", p.id)] == locked.render(p.question)
        assert by_cond[("steered", p.id)] == by_cond[("direct", p.id)]
        assert by_cond[("cot-prompt", p.id)].endswith(f"Answer: {COT_TRIGGER}")
    meta = results.metadata
    assert meta["locked_format"] == locked.to_dict()
    assert meta["unlocked_format"] == locked.cot_counterpart().to_dict()
    assert meta["native_key"]["n_prompts"] == len(KEY_Q)


def test_summary_agrees_with_rows(results, problems):
    table = results.summary(n_boot=300, seed=1)
    rows = pd.DataFrame(results.rows)
    n = len(problems)
    direct = rows[rows.condition == "direct"].set_index("problem_id")["correct"]
    for rec in table.to_dict("records"):
        pooled = rec["condition"] == "random" and pd.isna(rec["seed"])
        sel = rows[rows.condition == rec["condition"]]
        if not pd.isna(rec["alpha"]):
            sel = sel[sel.alpha == rec["alpha"]]
        if not pd.isna(rec["seed"]):
            sel = sel[sel.seed == rec["seed"]]
        assert rec["n"] == len(sel) == n * (len(SEEDS) if pooled else 1)
        assert rec["n_seeds"] == (len(SEEDS) if pooled else 1)
        assert rec["k"] == sel.correct.sum()
        assert rec["accuracy"] == pytest.approx(sel.correct.mean())
        assert rec["acc_lo"] <= rec["accuracy"] <= rec["acc_hi"]
        assert rec["cot_rate"] == pytest.approx(sel.cot_format.mean())
        assert rec["multi_step_rate"] == pytest.approx(sel.output.map(arithmetic_steps).ge(2).mean())
        assert rec["degenerate_rate"] == pytest.approx(sel.output.map(degenerate).mean())
        assert rec["mean_tokens"] == pytest.approx(sel.n_tokens.mean())
        per_problem = sel.groupby("problem_id")["correct"].mean()
        ci = paired_bootstrap_diff(per_problem[direct.index].to_numpy(), direct.to_numpy(),
                                   n_boot=300, seed=1)
        assert rec["diff"] == pytest.approx(per_problem.mean() - direct.mean())
        assert (rec["diff_lo"], rec["diff_hi"]) == pytest.approx((ci.lo, ci.hi))
        assert rec["diff_lo"] <= rec["diff"] <= rec["diff_hi"]
        if not pooled:
            paired = sel.set_index("problem_id")["correct"][direct.index]
            assert rec["mcnemar_p"] == pytest.approx(mcnemar_exact(paired, direct))
    first = table.iloc[0]
    assert first["condition"] == "direct" and first["diff"] == 0 and first["mcnemar_p"] == 1.0
    assert list(table.condition.unique()) == ["direct", "cot-prompt", "steered", "native-key", "random"]
    assert len(table[table.condition == "steered"]) == len(ALPHAS)
    assert len(table[table.condition == "random"]) == len(ALPHAS) * (len(SEEDS) + 1)


def test_same_seed_same_table(tiny_models, pack, problems, results):
    again = evaluate(tiny_models["qwen2-deep"], problems, conditions=["direct", "steered", "random"],
                     pack=pack, alphas=ALPHAS[:1], seeds=SEEDS, decoding=DECODING)
    keep = {("direct", None, None), ("steered", ALPHAS[0], None),
            *(("random", ALPHAS[0], s) for s in SEEDS)}
    subset = [r for r in results.rows if (r["condition"], r["alpha"], r["seed"]) in keep]
    assert again.rows == subset
    pd.testing.assert_frame_equal(again.summary(n_boot=200, seed=3),
                                  EvalResults(subset).summary(n_boot=200, seed=3))


def test_results_round_trip(results, pack, tmp_path):
    paths = results.save(tmp_path / "out")
    back = EvalResults.load(tmp_path / "out")
    assert back.rows == results.rows and back.metadata == results.metadata
    pd.testing.assert_frame_equal(back.summary(n_boot=100), results.summary(n_boot=100))
    parquet = pd.read_parquet(paths["parquet"])
    assert len(parquet) == len(results.rows)
    assert list(parquet.problem_id) == [r["problem_id"] for r in results.rows]
    meta = json.loads(paths["meta"].read_text())
    assert meta["target"]["n_layers"] == 5 and meta["source"]["n_layers"] == 3
    assert meta["dataset"] == "toy" and meta["decoding"]["max_new_tokens"] == DECODING.max_new_tokens
    assert meta["library_version"] and meta["seeds"] == list(SEEDS)
    _, pack_meta = load_artifact(pack.save(tmp_path / "pack.safetensors"), "CapabilityPack")
    assert meta["pack_hash"] == pack.content_hash == pack_meta["content_hash"]


def test_select_alpha_on_dev_records_and_saves(tiny_models, pack, dev_problems, problems, tmp_path):
    model = tiny_models["qwen2-deep"]
    with pytest.raises(UnlockLensError, match="dev and eval problems overlap"):
        select_alpha(model, pack, dev_problems + problems[:1], [0.5], eval_problems=problems)
    renamed = [type(p)(f"x{p.id}", p.question, p.answer, p.dataset, p.split) for p in problems[:1]]
    with pytest.raises(UnlockLensError, match="1 shared questions"):
        select_alpha(model, pack, dev_problems + renamed, [0.5], eval_problems=problems)
    path = tmp_path / "selected.safetensors"
    original = (pack.alpha, dict(pack.alignment))
    try:
        sel = select_alpha(model, pack, dev_problems, [2.0, 0.5], eval_problems=problems,
                           save_to=path, decoding=DECODING)
        assert sel.alpha == best_alpha(sel.accuracy) and sel.alpha in (0.5, 2.0)
        assert pack.alpha == sel.alpha
        saved = CapabilityPack.load(path)
        record = saved.alignment["alpha_selection"]
        assert saved.alpha == sel.alpha and record["n_dev"] == len(dev_problems)
        assert set(record["dev_accuracy"]) == {"0.5", "2"} and record["dev_ids_hash"]
        assert {r["problem_id"] for r in sel.results.rows} == {p.id for p in dev_problems}
    finally:
        pack.alpha, pack.alignment = original


def test_best_alpha_prefers_accuracy_then_smaller_alpha():
    assert best_alpha({0.5: 0.4, 1.0: 0.6, 2.0: 0.6}) == 1.0
    assert best_alpha({2.0: 0.1, 0.1: 0.1}) == 0.1


def test_bad_input_is_refused(tiny_models, pack, problems):
    model = tiny_models["qwen2-deep"]
    with pytest.raises(UnlockLensError, match="unknown condition"):
        evaluate(model, problems, conditions="direct,telepathy", pack=pack)
    with pytest.raises(UnlockLensError, match="empty"):
        evaluate(model, [], conditions="direct")
    with pytest.raises(UnlockLensError, match="needs key questions"):
        evaluate(model, problems, conditions="native-key", pack=pack)
    with pytest.raises(UnlockLensError, match="also evaluation problems"):
        evaluate(model, problems, conditions="native-key", pack=pack,
                 key_questions=[problems[0].question])
    with pytest.raises(UnlockLensError, match="need a CapabilityPack"):
        evaluate(model, problems, conditions="steered", alphas=[1.0])
    with pytest.raises(UnlockLensError, match="made for"):
        evaluate(tiny_models["qwen2"], problems, conditions="steered", pack=pack)


def test_few_shot_format_and_cot_counterpart(tiny_models, problems):
    shots = (("What is 1 + 1?", "The final answer is 2."),)
    locked = PromptFormat("direct-1shot", "Solve it.", few_shot=shots)
    res = evaluate(tiny_models["qwen2"], problems[:2], conditions="direct,cot-prompt",
                   locked_format=locked, decoding=Decoding(max_new_tokens=3))
    prompts = {r["condition"]: r["prompt"] for r in res.rows}
    assert "Question: What is 1 + 1?\nAnswer: The final answer is 2." in prompts["direct"]
    assert prompts["cot-prompt"].endswith(COT_TRIGGER) and "What is 1 + 1?" in prompts["cot-prompt"]
    assert res.metadata["unlocked_format"]["name"] == "cot-1shot"
    assert "pack_hash" not in res.metadata


@pytest.mark.parametrize(("text", "expected"), [
    ("The final answer is 8.", False),
    ("8", False),
    ("3 + 5 = 8. The final answer is 8.", True),
    ("Tom starts with three apples.\nHe buys five more apples.\nThe final answer is 8.", True),
    ("He has <<3+5=8>>8 apples", True),
    ("Tom has 8 apples. The answer is 8.", False),
])
def test_shows_working(text, expected):
    assert shows_working(text) is expected


@pytest.mark.skipif(default_data_dir() is None, reason="needs ../shared/data")
def test_cli_eval(tiny_dirs, pack, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLOCK_LENS_DATA", str(default_data_dir()))
    pack_path = pack.save(tmp_path / "pack.safetensors")
    runner = CliRunner()
    args = ["eval", "--pack", str(pack_path), "--target", str(tiny_dirs["qwen2-deep"]),
            "--conditions", "direct,steered,random", "--alphas", "0.5,1", "--seeds", "0",
            "--limit", "3", "--max-new-tokens", "3", "--n-boot", "50", "--out", str(tmp_path / "ev")]
    r = runner.invoke(app, [*args, "--dataset", "svamp"])
    assert r.exit_code == 0, r.output
    back = EvalResults.load(tmp_path / "ev")
    assert len(back.rows) == 3 * (1 + 2 + 2) and back.metadata["dataset"] == "svamp"
    summary = pd.read_csv(tmp_path / "ev" / "summary.csv")
    assert len(summary[summary.condition == "steered"]) == 2
    assert "steered" in r.output and (tmp_path / "ev" / "summary.md").is_file()
    r = runner.invoke(app, [*args, "--dataset", "svampp"])
    assert r.exit_code != 0 and isinstance(r.exception, UnlockLensError)
    assert "--dataset 'svampp' is not a known dataset" in str(r.exception)
    r = runner.invoke(app, [*args[:6], "bogus", *args[7:], "--dataset", "svamp"])
    assert r.exit_code != 0 and "unknown condition" in str(r.exception)
    # --backend bridge: the bridge's loop, the same rows as the default (auto -> HF's generate);
    # vllm without vllm installed: how to install it
    assert back.metadata["decoding"]["engine"] == "auto"
    r = runner.invoke(app, [*args[:-1], str(tmp_path / "ev-b"), "--dataset", "svamp", "--backend", "bridge"])
    assert r.exit_code == 0, r.output
    bridge_rows = EvalResults.load(tmp_path / "ev-b").rows
    assert [x["output"] for x in bridge_rows] == [x["output"] for x in back.rows]
    assert EvalResults.load(tmp_path / "ev-b").metadata["decoding"]["engine"] == "bridge"
    r = runner.invoke(app, [*args, "--dataset", "svamp", "--backend", "nope"])
    assert r.exit_code != 0 and "--backend 'nope'" in str(r.exception)
    pytest.importorskip("unlock_lens.backends.vllm")
    try:
        import vllm  # noqa: F401
    except ImportError:
        r = runner.invoke(app, [*args, "--dataset", "svamp", "--backend", "vllm"])
        assert r.exit_code != 0 and "unlock-lens[vllm]" in str(r.exception)


def test_random_mapped_condition_carries_random_source_directions_through_the_maps(tiny_models):
    """`random-mapped` steers with random source directions (the key's norms) mapped by the
    pack: each seed's steering is exactly controls.random_mapped of the pack, at every alpha."""
    from unlock_lens.controls import random_mapped
    from unlock_lens.evaluate import runner

    src, tgt = tiny_models["llama"], tiny_models["qwen2"]
    pack = Unlock(source=src, target=tgt, rank=4).run(KEY_Q, ALIGN_Q)
    runs = runner._plan(["random-mapped"], ["p"], ["q"], [0.1, 0.3], [0, 1], pack, None)
    assert [(r.condition, r.alpha, r.seed) for r in runs] == [
        ("random-mapped", 0.1, 0), ("random-mapped", 0.1, 1), ("random-mapped", 0.3, 0), ("random-mapped", 0.3, 1)]
    for r in runs:
        want = random_mapped(pack.key, pack.maps, r.seed)
        assert r.steering.alpha == r.alpha and set(r.steering.directions) == set(want)
        for t, v in want.items():
            torch.testing.assert_close(r.steering.directions[t], v)
    assert not torch.allclose(runs[0].steering.directions[0], runs[1].steering.directions[0])
