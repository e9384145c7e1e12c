"""Interventions as operators: the edit registry, the one position rule, and a new edit
(``clamp``) that works on the torch path (tests/test_decoding_oracle.py decodes with it against
an independent implementation) and is refused or supported explicitly by every other engine."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from unlock_lens.backends.vllm import plan_steering, rows_to_edit
from unlock_lens.errors import UnlockLensError
from unlock_lens.export import (
    additive_directions,
    export_control_vector_gguf,
    vllm_intervention_specs,
)
from unlock_lens.interventions import EDITS, Edit, apply_edit, get_edit, register_edit, selects
from unlock_lens.steer import Steering, edit_residual

g = torch.Generator().manual_seed(0)
H = torch.randn(5, 16, generator=g) * 3
R = torch.randn(16, generator=g)
R_HAT = R / R.norm()

# the formulas, written out independently of the registry
EXPECTED = {
    "raw": lambda a: H + a * R,
    "unit": lambda a: H + a * R_HAT,
    "resid": lambda a: H + a * H.norm(dim=-1, keepdim=True) * R_HAT,
    "rotate": lambda a: H.norm(dim=-1, keepdim=True) * torch.nn.functional.normalize(
        torch.nn.functional.normalize(H, dim=-1) + a * R_HAT, dim=-1),
    "clamp": lambda a: H + (torch.clamp(H @ R_HAT, min=a) - H @ R_HAT)[:, None] * R_HAT,
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_registered_edit_is_its_formula(name):
    for alpha in (0.3, -0.7, 2.0):
        torch.testing.assert_close(edit_residual(H, R, alpha, name), EXPECTED[name](alpha))
    assert set(EXPECTED) <= set(EDITS)


def test_clamp_raises_the_component_and_leaves_the_rest():
    before = H @ R_HAT
    level = float(before.median())  # some rows below the level, some above
    out = edit_residual(H, R, level, "clamp")
    after = out @ R_HAT
    assert (after >= level - 1e-5).all()
    below = before < level
    assert below.any() and (~below).any()  # both cases occur in this sample
    torch.testing.assert_close(after[~below], before[~below])  # already above: untouched
    rest = lambda x: x - (x @ R_HAT)[:, None] * R_HAT  # noqa: E731
    torch.testing.assert_close(rest(out), rest(H), atol=1e-5, rtol=1e-5)


def test_edit_dtype_float32_is_closer_to_the_exact_edit_on_bf16_states():
    """Why float32 is the library's default: on bf16 states of a 576-wide model at alpha 0.05,
    the edit computed in bf16 (``edit_dtype="model"``, the authors') misses the float64 edit by
    about twice what float32-then-one-rounding does (median over 200 states: 7.0% vs 3.3% of the edit's size)."""
    gen = torch.Generator().manual_seed(0)
    h = (3 * torch.randn(200, 576, generator=gen)).bfloat16()
    r = torch.randn(576, generator=gen)
    exact = torch.nn.functional.normalize(torch.nn.functional.normalize(h.double(), dim=-1)
                                          + 0.05 * r.double() / r.double().norm(), dim=-1) * h.double().norm(dim=-1, keepdim=True)
    size = (exact - h.double()).norm(dim=-1)

    def error(edit_dtype: str) -> float:
        out = apply_edit(h, r, 0.05, "rotate", edit_dtype)
        assert out.dtype == torch.bfloat16
        return float(((out.double() - exact).norm(dim=-1) / size).median())

    in_float32, in_bf16 = error("float32"), error("model")
    assert in_float32 < 0.04 and in_bf16 > 1.5 * in_float32, (in_float32, in_bf16)
    # on float32 states the two are one computation
    assert torch.equal(apply_edit(H, R, 0.3, "rotate", "model"), apply_edit(H, R, 0.3, "rotate"))
    with pytest.raises(UnlockLensError, match="unknown edit_dtype 'half'"):
        Steering({0: R}, 0.1, edit_dtype="half")


def test_registry_refuses_duplicates_and_names_the_known_edits():
    with pytest.raises(UnlockLensError, match="already registered"):
        register_edit(Edit("rotate", lambda h, r, a: h))
    with pytest.raises(UnlockLensError, match=r"unknown normalisation 'twist'.*'clamp'"):
        get_edit("twist")
    with pytest.raises(UnlockLensError, match="unknown normalisation"):
        Steering({0: R}, normalisation="twist")


@pytest.mark.parametrize(("rule", "expected"), [
    ("last_prompt", [3]), ("prompt", [0, 1, 2, 3]), ("final", [3, 4, 5]), ("all", [0, 1, 2, 3, 4, 5]),
])
def test_one_position_rule(rule, expected):
    picked = selects(rule, torch.arange(6), 3).nonzero().flatten().tolist()
    assert picked == expected
    # vLLM's flattened rows use the same rule: a request at positions 2..5 (chunked), prompt 4
    assert rows_to_edit([10, 14], [2], [4], rule) == [10 + p - 2 for p in expected if p >= 2]
    with pytest.raises(UnlockLensError, match="unknown positions"):
        selects("middle", torch.arange(3), 1)


def test_additive_engines_ask_the_operator(tiny_models):
    from unlock_lens.unlock import Unlock

    pipe = Unlock(source=tiny_models["qwen2"], target=tiny_models["llama"], rank=4, alpha=0.5,
                  normalisation="unit", positions="all")
    unit = pipe.run([f"Tom has {a} apples and buys {a + 2} more. How many?" for a in range(8)],
                    [f"Sara reads {a} pages a day for 3 days. How many pages?" for a in range(12)])
    clamp = dataclasses.replace(unit, normalisation="clamp")
    # additive edits export exactly; the clamp depends on h and is refused by name
    dirs = unit.target_directions()
    for t, v in additive_directions(unit).items():
        torch.testing.assert_close(v, 0.5 * dirs[t] / dirs[t].norm())
    with pytest.raises(UnlockLensError, match="'clamp' has no additive form"):
        additive_directions(clamp)
    with pytest.raises(UnlockLensError, match="'clamp' has no additive form"):
        export_control_vector_gguf(clamp, "never-written.gguf")
    with pytest.raises(UnlockLensError, match="'clamp' depends on each state h"):
        vllm_intervention_specs(clamp)
    # vLLM: the affine engine refuses it, the worker-hook engine runs it
    steering = clamp.steering()
    assert plan_steering(steering, n_layers=3, d_model=64).engine == "hook"
    with pytest.raises(UnlockLensError, match="depends on each state h"):
        plan_steering(steering, n_layers=3, d_model=64, engine="affine")
