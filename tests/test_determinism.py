"""Determinism on CPU: the same inputs and seed give bit-identical keys, maps, controls and
evaluation tables; different seeds give different controls. (GPU tolerances: see the
``unlock_lens.activations`` module docstring.)"""

from __future__ import annotations

import torch

from unlock_lens.align import fit_alignment
from unlock_lens.align.layers import AlignSpec
from unlock_lens.controls import random_like
from unlock_lens.diagnostics.distribution_shift import control_conditions, first_token_shift
from unlock_lens.generation import generate
from unlock_lens.prompts import get_format
from unlock_lens.unlock import Unlock

KEY_Q = ["Tom has 3 apples and buys 5 more. How many apples?", "What is 100 minus 37?",
         "If x / 4 = 6, what is x?"]
ALIGN_Q = [f"Sara reads {a} pages a day for {b} days. How many pages?" for a, b in
           [(3, 4), (10, 2), (7, 7), (12, 5), (9, 3), (20, 6)]]


def _pack(tiny_models, aggregator):
    pipe = Unlock(source=tiny_models["qwen2"], target=tiny_models["qwen2-deep"], rank=3,
                  aggregator=aggregator, batch_size=4)
    return pipe, pipe.align(pipe.extract(KEY_Q), ALIGN_Q, AlignSpec(pipe.method, pipe.rank, holdout=0.34))


def test_extract_and_align_twice_are_bit_identical(tiny_models):
    for aggregator in ("mean", "pca"):
        _, a = _pack(tiny_models, aggregator)
        _, b = _pack(tiny_models, aggregator)
        assert torch.equal(a.key.directions, b.key.directions)
        assert a.key.to_parts()[1] == b.key.to_parts()[1]
        assert a.maps.keys() == b.maps.keys()
        for t in a.maps:
            ta, tb = a.maps[t].to_tensors(), b.maps[t].to_tensors()
            assert all(torch.equal(ta[k], tb[k]) for k in ta)
            assert a.maps[t].metrics == b.maps[t].metrics
        da, db = a.target_directions(), b.target_directions()
        assert all(torch.equal(da[t], db[t]) for t in da)


def test_fit_alignment_holdout_split_is_seeded():
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(40, 6, generator=g), torch.randn(40, 5, generator=g)
    for method in ("svd", "procrustes", "cca", "ridge"):
        a = fit_alignment(X, Y, method=method, rank=3, holdout=0.25, seed=7)
        b = fit_alignment(X, Y, method=method, rank=3, holdout=0.25, seed=7)
        c = fit_alignment(X, Y, method=method, rank=3, holdout=0.25, seed=8)
        assert all(torch.equal(a.to_tensors()[k], b.to_tensors()[k]) for k in a.to_tensors())
        assert not torch.equal(a.weight, c.weight)


def test_random_controls_are_seeded_and_leave_global_rng_alone():
    dirs = {0: torch.ones(8), 3: 2 * torch.ones(8)}
    state = torch.get_rng_state()
    a, b, c = random_like(dirs, 0), random_like(dirs, 0), random_like(dirs, 1)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in dirs)
    assert all(not torch.equal(a[k], c[k]) for k in dirs)
    for k in dirs:
        torch.testing.assert_close(a[k].norm(), dirs[k].norm())


def test_evaluation_tables_and_generations_repeat_exactly(tiny_models):
    pipe, pack = _pack(tiny_models, "mean")
    target = tiny_models["qwen2-deep"]

    def table():
        return first_token_shift(target, KEY_Q, get_format("direct"), get_format("cot"),
                                 control_conditions(pack, 0.5, seeds=(0, 1)), batch_size=2)

    first, second = table(), table()
    assert first == second
    random_rows = [r for r in first if r["condition"].startswith("random a=")]
    assert random_rows[0]["kl_to_unlocked"] != random_rows[1]["kl_to_unlocked"]  # seeds differ
    prompts = pipe.target_variant.prompts(KEY_Q)
    steering = pack.steering(0.5)
    assert generate(target, prompts, steering=steering, max_new_tokens=4) == \
        generate(target, prompts, steering=steering, max_new_tokens=4)


def test_evaluate_results_table_repeats_exactly(tiny_models):
    from unlock_lens.evaluate.datasets import Problem
    from unlock_lens.evaluate.runner import Decoding, evaluate

    _, pack = _pack(tiny_models, "mean")
    target = tiny_models["qwen2-deep"]
    problems = [Problem(f"p{i}", q, "8", "toy", "test") for i, q in enumerate(KEY_Q[:2])]

    def run():
        res = evaluate(target, problems, conditions=("direct", "steered", "random"), pack=pack,
                       alphas=[0.5], seeds=(0, 1), decoding=Decoding(max_new_tokens=3, batch_size=2))
        return [{k: v for k, v in r.items() if "time" not in k} for r in res.rows]

    first, second = run(), run()
    assert first == second
