"""The analysis scripts' problem sets: what one script selects on is never another's evaluation set."""

import argparse

import pytest

from unlock_lens.evaluate.datasets import default_data_dir, load_dataset


@pytest.mark.skipif(default_data_dir() is None, reason="needs ../shared/data")
def test_data_kinds_generates_on_none_of_real_pair_datas_evaluation_problems():
    from analysis.data_kinds import generation_problems
    from analysis.real_pair_data import problem_sets

    _, held = problem_sets(argparse.Namespace(seed=0, n_dev=16, n_eval=200), [])
    held_ids = {p.id for p in held}
    gen = generation_problems(30)
    assert len({p.id for p in gen}) == 30 and {p.dataset for p in gen} == {"svamp"}
    assert not {p.id for p in gen} & held_ids
    # the first 30 SVAMP test problems (what data_kinds took before the split) are not disjoint
    assert len({p.id for p in load_dataset("svamp", "test")[:30]} & held_ids) == 7
    with pytest.raises(SystemExit, match="lower --n-gen"):
        generation_problems(10_000)
