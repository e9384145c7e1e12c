"""The live explorer: its table (cached pieces, one steered pass per move) and its widgets."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from unlock_lens.activations import Variant
from unlock_lens.align.layers import AlignSpec
from unlock_lens.diagnostics.ablations import prepare_ablation
from unlock_lens.diagnostics.explorer import explorer, first_token_figure, first_token_table
from unlock_lens.errors import UnlockLensError
from unlock_lens.masterkey import extract_masterkey
from unlock_lens.prompts import COT, DIRECT


@pytest.fixture(scope="module")
def setup(tiny_models):
    src, tgt = tiny_models["qwen2"], tiny_models["qwen2-deep"]
    qs = [f"Tom has {a} apples and buys {a + 2} more. How many?" for a in range(14)]
    key = extract_masterkey(Variant(src, DIRECT), Variant(src, COT), qs[:4])
    return prepare_ablation(key, Variant(src, DIRECT), Variant(tgt, DIRECT), qs[4:10], qs[10:],
                            spec=AlignSpec(rank=4), alpha=0.5)


def test_table_holds_the_unlocked_top_tokens_under_each_condition(setup):
    layers = setup.target_layers
    frame = first_token_table(setup, alpha=0.0, layers=layers, rank=4, items=(0, 2), top=5)
    assert len(frame) == 2 * 5 * 3
    wide = frame.pivot_table(index=["item", "token_id"], columns="condition", values="prob")
    # alpha 0 attaches nothing: steered is the unsteered distribution exactly
    torch.testing.assert_close(torch.tensor(wide["steered"].values), torch.tensor(wide["unsteered"].values))
    # the tokens are the unlocked prompt's top 5, in its order
    for item in (0, 2):
        ids = frame[(frame.item == item) & (frame.condition == "unlocked prompt")].token_id.tolist()
        assert ids == setup.ref_logits[item].topk(5).indices.tolist()
    assert frame.attrs["kl_to_unlocked"]["unlocked prompt"] == pytest.approx(0.0, abs=1e-6)
    moved = first_token_table(setup, alpha=2.0, layers=layers[-2:], rank=4, items=(0, 2), top=5)
    assert moved.attrs["kl_to_unlocked"]["steered"] != pytest.approx(frame.attrs["kl_to_unlocked"]["steered"])
    assert len(first_token_figure(moved).data) == 2 * 3
    with pytest.raises(UnlockLensError, match="items"):
        first_token_table(setup, alpha=0.5, layers=layers, rank=4, items=(99,))
    with pytest.raises(UnlockLensError, match="band is empty"):
        first_token_table(setup, alpha=0.5, layers=[], rank=4)


@pytest.mark.filterwarnings("ignore:cached=False")
def test_table_on_the_prefix_cache_equals_full_prefills(setup):
    assert setup.uses_prefix_cache
    full = replace(setup, cached=False)
    kwargs = dict(alpha=1.0, layers=setup.target_layers[1:4], rank=2, items=(0, 1, 3), top=6)
    cached, want = first_token_table(setup, **kwargs), first_token_table(full, **kwargs)
    assert cached[["item", "token_id", "condition"]].equals(want[["item", "token_id", "condition"]])
    torch.testing.assert_close(torch.tensor(cached.prob.values), torch.tensor(want.prob.values),
                               atol=1e-4, rtol=0)
    for name in ("entropy", "kl_to_unlocked"):
        for cond, value in want.attrs[name].items():
            assert cached.attrs[name][cond] == pytest.approx(value, abs=1e-4)
    assert cached.attrs["kl_to_unlocked"]["steered"] > 1e-2  # the steering moved it


def test_widgets_redraw_on_a_slider_move(setup):
    pytest.importorskip("ipywidgets")
    panel = explorer(setup, items=(0,), top=4)
    alpha, band, rank = panel.children[0].children
    assert rank.options == (1, 2, 4)  # capped at what the 6 alignment prompts allow
    assert "alpha 0.5," in panel.figure.layout.title.text
    before = [list(bar.y) for bar in panel.figure.data]
    alpha.value = 1.5
    assert "alpha 1.5," in panel.figure.layout.title.text
    assert [list(bar.y) for bar in panel.figure.data] != before  # the steered bars moved
