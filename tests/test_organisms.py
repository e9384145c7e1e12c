"""The organism zoo: task generator and scorer, tokenizer, shipped weights, and the UNLOCK
targets measured on a reduced held-out set (margins below the full-size numbers in
``unlock_lens/organisms/RESULTS.md``), so a regression in extraction, alignment or steering
fails here."""

from __future__ import annotations

import random

import pytest

from unlock_lens.organisms import (
    LOCKED,
    LONG_OPS,
    ORGANISMS,
    SHORT_OPS,
    TRIGGER,
    UNLOCKED,
    ZOO_DIR,
    OrganismFormat,
    Problem,
    format_from_dict,
    generate_problems,
    generate_questions,
    is_step_format,
    parse_answer,
    score_completion,
    score_completions,
    split_of,
)
from unlock_lens.organisms.task import random_problem
from unlock_lens.organisms.tokenizer import VOCAB, build_tokenizer

EXAMPLE = Problem(6, (("+", 5), ("*", 8), ("-", 5), ("-", 6), ("*", 4)))

# ---------------------------------------------------------------------------------------------
# task generator and scorer


def test_problem_strings_and_values():
    assert EXAMPLE.question == "a6b+5c*8d-5e-6f*4"
    assert EXAMPLE.values == [6, 1, 8, 3, 7, 8]
    assert EXAMPLE.step_completion == "a6b1c8d3e7f8=8."
    assert EXAMPLE.direct_completion == "=8."
    assert EXAMPLE.answer == 8 and EXAMPLE.n_ops == 5 and not EXAMPLE.is_long


def test_parse_round_trip():
    rng = random.Random(0)
    for n in (1, 4, 5, 6, 7):
        p = random_problem(rng, n)
        assert Problem.parse(p.question) == p
        assert Problem.parse(f"{TRIGGER} {p.question}?") == p
    with pytest.raises(ValueError):
        Problem.parse("a6c+5")
    with pytest.raises(ValueError):
        Problem.parse("hello")


def test_generator_deterministic_distinct_and_split_disjoint():
    a = generate_problems(50, split="test", seed=3)
    assert a == generate_problems(50, split="test", seed=3)
    assert len({p.question for p in a}) == 50
    assert {p.n_ops for p in a} == set(SHORT_OPS)
    splits = {s: set(generate_questions(40, split=s)) for s in ("key", "align", "dev", "test")}
    names = list(splits)
    for i, s in enumerate(names):
        assert all(split_of(q) == s for q in splits[s])
        for t in names[i + 1:]:
            assert not splits[s] & splits[t]
    long = generate_problems(10, split="align", n_ops=LONG_OPS)
    assert all(p.is_long for p in long)
    held = sum(split_of(random_problem(random.Random(i), 5).question) != "train" for i in range(2000))
    assert 60 < held < 200  # one sixteenth held out


def test_scorer():
    s = score_completion(EXAMPLE, "a6b1c8d3e7f8=8.")
    assert s.correct and s.step_format and s.steps_correct and s.answer == 8
    s = score_completion(EXAMPLE.question, "=8.")
    assert s.correct and not s.step_format
    s = score_completion(EXAMPLE, "a6b1c8d3e7f9=8.")  # wrong step, right answer
    assert s.correct and s.step_format and not s.steps_correct
    assert not score_completion(EXAMPLE, "a6b1c8=8.").step_format  # too few steps
    assert not is_step_format("aaaaaaaa")
    assert parse_answer("aaaa") is None and parse_answer("=3=4.") == 4
    res = score_completions([EXAMPLE, EXAMPLE], ["=8.", "a6b1c8d3e7f8=1."])
    assert (res.n, res.n_correct, res.n_step) == (2, 1, 1)
    lo, hi = res.interval()
    assert 0 < lo < 0.5 < hi < 1


def test_formats():
    assert LOCKED.render(EXAMPLE.question) == "a6b+5c*8d-5e-6f*4?"
    assert UNLOCKED.render(EXAMPLE.question) == "STEP a6b+5c*8d-5e-6f*4?"
    assert LOCKED.render_all(["a1b+2"]) == ["a1b+2?"]
    # the last prompt token is the same with and without the trigger
    assert LOCKED.render("a1b+2")[-1] == UNLOCKED.render("a1b+2")[-1]
    d = UNLOCKED.to_dict()
    assert d["kind"] == "organism"
    back = format_from_dict(d)
    assert isinstance(back, OrganismFormat) and back == UNLOCKED


def test_tokenizer_round_trip():
    tok = build_tokenizer()
    assert len(tok) == len(VOCAB) < 32
    for text in (EXAMPLE.question + "?", UNLOCKED.render(EXAMPLE.question), EXAMPLE.step_completion):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    ids = tok(f"{TRIGGER} a1", add_special_tokens=False)["input_ids"]
    assert len(ids) == 4  # the trigger is one token
    assert tok.decode([tok.bos_token_id, *ids, tok.eos_token_id], skip_special_tokens=True) == f"{TRIGGER} a1"


# ---------------------------------------------------------------------------------------------
# the shipped zoo


def test_zoo_size_and_files():
    total = sum(f.stat().st_size for f in ZOO_DIR.rglob("*") if f.is_file())
    assert total <= 15 * 2**20, f"zoo is {total / 2**20:.1f} MB"
    for name in ORGANISMS:
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (ZOO_DIR / name / f).is_file(), f"{name}/{f} missing"


@pytest.fixture(scope="module")
def zoo():
    from unlock_lens.organisms import load_organism

    return {name: load_organism(name) for name in ORGANISMS}


def test_load_via_load_model(zoo):
    from unlock_lens.model_info import model_id
    from unlock_lens.models import load_model

    shapes = {n: (int(m.cfg.n_layers), int(m.cfg.d_model)) for n, m in zoo.items()}
    assert shapes["chain-s"] == shapes["chain-s-post"] == (3, 96)
    assert shapes["chain-m"] == (4, 128)
    again = load_model(str(ZOO_DIR / "chain-s"))
    assert model_id(again) == model_id(zoo["chain-s"])
    from unlock_lens.errors import UnlockLensError
    from unlock_lens.organisms import load_organism

    with pytest.raises(UnlockLensError):
        load_organism("no-such-organism")


# ---------------------------------------------------------------------------------------------
# targets on a reduced held-out set (n = N_TEST; margins below the full-size results)

N_TEST = 100


@pytest.fixture(scope="module")
def test_problems():
    return generate_problems(N_TEST, split="test", n_ops=SHORT_OPS)


@pytest.fixture(scope="module")
def keys(zoo):
    from unlock_lens.organisms.demo import prompt_key

    return {n: prompt_key(zoo[n], 64) for n in ("chain-s", "chain-m")}


#: correct / step-format answers of 100 on ``test_problems``, greedy, measured with the lock's
#: versions (``evaluate(load_organism(name), test_problems, fmt)``). Multi-token generation is what
#: this pins: a broken KV cache (transformers 5.24 without unlock_lens.compat) gives 0 triggered.
RECORDED = {  # name: (trigger correct, trigger step, direct correct, direct step)
    "chain-s": (100, 100, 34, 0),
    "chain-m": (100, 100, 28, 0),
    "chain-s-post": (100, 100, 100, 100),
}


@pytest.mark.parametrize("name", list(RECORDED))
def test_trigger_and_direct_accuracy_stay_at_their_recorded_values(zoo, test_problems, name):
    from unlock_lens.organisms.demo import evaluate

    trigger = evaluate(zoo[name], test_problems, UNLOCKED)
    direct = evaluate(zoo[name], test_problems, LOCKED)
    t_ok, t_step, d_ok, d_step = RECORDED[name]
    assert (trigger.n_correct, trigger.n_step) == (t_ok, t_step), trigger
    # a greedy near-tie may flip on another CPU's arithmetic: two problems of slack
    assert abs(direct.n_correct - d_ok) <= 2 and abs(direct.n_step - d_step) <= 2, direct


def test_demo_stops_when_the_trigger_row_fails():
    from unlock_lens.errors import SanityCheckError
    from unlock_lens.organisms.demo import check_trigger_rows

    check_trigger_rows({"chain-s": 1.0, "chain-m": 0.9})
    with pytest.raises(SanityCheckError, match=r"chain-m 0%.*requirements.lock"):
        check_trigger_rows({"chain-s": 1.0, "chain-m": 0.0})


@pytest.mark.parametrize("name", ["chain-s", "chain-m"])
def test_same_model_unlock(zoo, keys, test_problems, name):
    from unlock_lens.organisms.demo import DEFAULTS, evaluate, self_pack

    model = zoo[name]
    res = evaluate(model, test_problems, LOCKED, self_pack(keys[name], model, DEFAULTS["alpha"]))
    assert res.accuracy >= 0.60 and res.step_rate >= 0.85, res


def test_cross_model_trigger_free_unlock_beats_random(zoo, keys, test_problems):
    from unlock_lens.align.layers import AlignSpec
    from unlock_lens.organisms.demo import (
        DEFAULTS,
        align_questions,
        evaluate,
        random_controls,
        transfer,
    )
    from unlock_lens.steer import Steering

    src, tgt = zoo[DEFAULTS["source"]], zoo[DEFAULTS["target"]]
    pack = transfer(keys[DEFAULTS["source"]], src, tgt, align_questions("trigger-free", DEFAULTS["n_align"]),
                    AlignSpec(DEFAULTS["method"], DEFAULTS["rank"]), alpha=DEFAULTS["alpha"])
    dirs = pack.target_directions()
    direct = evaluate(tgt, test_problems, LOCKED).accuracy
    steered = evaluate(tgt, test_problems, LOCKED, Steering(dirs, alpha=DEFAULTS["alpha"]))
    assert steered.accuracy - direct >= 0.20, (direct, steered)
    controls = [evaluate(tgt, test_problems, LOCKED, c).accuracy
                for c in random_controls(dirs, DEFAULTS["alpha"], range(3))]
    assert sum(controls) / len(controls) <= direct + 0.08, (direct, controls)


def test_pack_with_organism_format_reloads_and_steers_the_same(zoo, keys, test_problems, tmp_path):
    """A saved pack keeps the organisms' prompt format (not the math-word-problem frame)."""
    from unlock_lens.align.layers import AlignSpec
    from unlock_lens.organisms.demo import DEFAULTS, align_questions, transfer
    from unlock_lens.organisms.task import OrganismFormat
    from unlock_lens.pack import CapabilityPack
    from unlock_lens.prompts import PromptFormat

    src, tgt = zoo[DEFAULTS["source"]], zoo[DEFAULTS["target"]]
    pack = transfer(keys[DEFAULTS["source"]], src, tgt, align_questions("trigger-free", 32),
                    AlignSpec("svd", 4), alpha=DEFAULTS["alpha"])
    back = CapabilityPack.load(pack.save(tmp_path / "pack.safetensors"))
    fmt = PromptFormat.from_dict(back.key.unlocked_format)
    assert isinstance(fmt, OrganismFormat) and fmt == UNLOCKED
    q = test_problems[0].question
    assert fmt.render(q) == UNLOCKED.render(q) and "Question:" not in fmt.render(q)


def test_run_demo_table(tmp_path):
    from html import escape

    from test_legends import DEMO_COLUMNS

    from unlock_lens.legends import TABLE_LEGENDS
    from unlock_lens.organisms import run_demo

    df = run_demo(n_test=40, n_random=2, html=tmp_path / "demo.html", verbose=False)
    assert {"condition", "model", "n", "accuracy", "ci_lo", "ci_hi", "step_rate"} <= set(df.columns)
    assert any("UNLOCK" in c for c in df["condition"]) and any("random" in c for c in df["condition"])
    assert (df["n"] > 0).all() and ((df["ci_lo"] <= df["accuracy"]) & (df["accuracy"] <= df["ci_hi"])).all()
    html = (tmp_path / "demo.html").read_text()
    assert html.count("plotly") > 0 and escape(TABLE_LEGENDS["demo"]) in html
    assert set(df.columns) == set(DEMO_COLUMNS)  # the columns the legend defines (tests/test_legends.py)


# ---------------------------------------------------------------------------------------------
# the hard pair: the paper's alignment data (locked short chains only)


@pytest.fixture(scope="module")
def dev_problems():
    return generate_problems(N_TEST, split="dev", n_ops=SHORT_OPS)


def mean_cosine_and_accuracy(zoo, keys, pair, regime, data, dev_problems, alpha=0.5, method="svd"):
    """Mean cosine to the native key and dev accuracy of a rank-16 map fitted on ``regime``."""
    from unlock_lens.align.layers import AlignSpec
    from unlock_lens.organisms.demo import align_questions, cosine_to_native, evaluate, transfer
    from unlock_lens.steer import Steering

    s_name, t_name = pair
    dirs = transfer(keys[s_name], zoo[s_name], zoo[t_name], align_questions(regime, 256),
                    AlignSpec(method, 16, data=data)).target_directions()
    cos = cosine_to_native(dirs, keys[t_name])
    acc = evaluate(zoo[t_name], dev_problems, LOCKED, Steering(dirs, alpha=alpha)).accuracy
    return sum(cos.values()) / len(cos), acc


def test_short_only_regime_is_the_papers_data():
    from unlock_lens.organisms.demo import align_questions

    qs = align_questions("short-only", 64)
    assert len(set(qs)) == 64 and all(split_of(q) == "align" for q in qs)
    assert {Problem.parse(q).n_ops for q in qs} <= set(SHORT_OPS)
    assert not any(q.startswith(TRIGGER) for q in qs)


@pytest.mark.parametrize("pair", [("chain-s", "chain-m"), ("chain-m", "chain-s")],
                         ids=lambda p: "->".join(p))
def test_hard_pair_fails_on_the_papers_data_and_works_on_trigger_free_data(zoo, keys, dev_problems,
                                                                          pair):
    """On the paper's data (locked short chains) the `last` map misses the key (low cosine, no
    unlock), while the same map fitted on trigger-free data (half long chains) carries it: the
    failure is the data's, not the map's. `tokens+last` (every prompt position) does not rescue
    it on the organisms either: the pair stays hard (analysis/results/organisms.md, hard pair).
    Measured with the lock's versions, svd 16, alpha 0.5: short-only `last` cos -0.17 (s->m) /
    0.20 (m->s), `tokens+last` -0.32 / 0.58, dev accuracy at the direct level for both;
    trigger-free `last` cos 0.96 / 0.99, dev accuracy 100%."""
    from unlock_lens.organisms.demo import evaluate

    direct = evaluate(zoo[pair[1]], dev_problems, LOCKED).accuracy
    hard_cos, hard_acc = mean_cosine_and_accuracy(zoo, keys, pair, "short-only", "last", dev_problems)
    _, tokens_acc = mean_cosine_and_accuracy(zoo, keys, pair, "short-only", "tokens+last", dev_problems)
    easy_cos, easy_acc = mean_cosine_and_accuracy(zoo, keys, pair, "trigger-free", "last", dev_problems)
    assert hard_cos < 0.45 and hard_acc <= direct + 0.15, (hard_cos, hard_acc, direct)
    assert tokens_acc <= direct + 0.15, (tokens_acc, direct)
    assert easy_cos > 0.85 and easy_acc >= direct + 0.5, (easy_cos, easy_acc, direct)


def test_continuations_with_the_last_token_partly_rescue_the_hard_pair_one_way(zoo, keys, dev_problems):
    """chain-m -> chain-s on the paper's data (locked short chains): a map fitted on the source's
    ``STEP`` continuations read after the locked prompt *plus* the last prompt token (procrustes
    16, alpha 0.5: the dev-best cell of analysis/organisms.py) lifts dev accuracy off the direct
    level; the continuations alone do not (the map also needs the states where the key is
    applied). Measured with the lock's versions: direct 31%, continuations+last 46% (test: 50.3%
    against random 30.6%), continuations 25%; s -> m is not rescued (organisms.md, hard pair)."""
    from unlock_lens.organisms.demo import evaluate

    pair = ("chain-m", "chain-s")
    direct = evaluate(zoo["chain-s"], dev_problems, LOCKED).accuracy
    _, both = mean_cosine_and_accuracy(zoo, keys, pair, "short-only", "continuations+last", dev_problems,
                                       method="procrustes")
    _, alone = mean_cosine_and_accuracy(zoo, keys, pair, "short-only", "continuations", dev_problems,
                                        method="procrustes")
    assert both >= direct + 0.1 and alone <= direct, (both, alone, direct)
