"""vLLM backend logic on CPU: Steering -> specs, refusals, row selection, the fused-residual edit."""

from __future__ import annotations

import pytest
import torch

from unlock_lens.backends.vllm import (
    VLLMSteeredGenerator,
    apply_rows,
    install_worker_hooks,
    plan_steering,
    remove_worker_hooks,
    rows_to_edit,
)
from unlock_lens.errors import UnlockLensError
from unlock_lens.steer import Steering, edit_residual

L, D = 4, 8


def steering(**kw) -> Steering:
    torch.manual_seed(0)
    return Steering(torch.randn(L, D), **kw)


def test_auto_picks_affine_for_constant_add():
    s = steering(alpha=0.5, normalisation="raw", positions="all")
    plan = plan_steering(s, n_layers=L, d_model=D)
    assert plan.engine == "affine"
    assert set(plan.affine_specs) == {f"blocks.{i}.hook_out" for i in range(L)}
    spec = plan.affine_specs["blocks.2.hook_out"]
    assert spec["op"] == "add" and "pos" not in spec
    assert torch.allclose(torch.tensor(spec["value"]), 0.5 * s.directions[2])


def test_affine_specs_pass_transformer_lens_validation():
    from transformer_lens.model_bridge.sources.vllm.intervention_specs import validate_spec

    plan = plan_steering(steering(normalisation="unit", positions="all"), n_layers=L, d_model=D)
    for name, spec in plan.affine_specs.items():
        validate_spec(name, spec, width=D)
    value = torch.tensor(plan.affine_specs["blocks.0.hook_out"]["value"])
    assert value.norm().item() == pytest.approx(0.1, rel=1e-5)


def test_affine_add_equals_torch_edit():
    """The TL worker applies h*1 + value; that equals edit_residual for raw/unit."""
    from transformer_lens.model_bridge.sources.vllm.worker_extension import _apply_op

    h = torch.randn(5, D)
    for norm in ("raw", "unit"):
        s = steering(alpha=0.3, normalisation=norm, positions="all")
        spec = plan_steering(s, n_layers=L, d_model=D).affine_specs["blocks.1.hook_out"]
        assert torch.allclose(_apply_op(h, spec), edit_residual(h, s.directions[1], 0.3, norm),
                              atol=1e-6)


@pytest.mark.parametrize("norm,positions", [("rotate", "last_prompt"), ("resid", "all"),
                                            ("raw", "last_prompt"), ("unit", "prompt"),
                                            ("raw", "final")])
def test_affine_refuses_what_it_cannot_do_exactly(norm, positions):
    s = steering(normalisation=norm, positions=positions)
    with pytest.raises(UnlockLensError, match="engine='hook'"):
        plan_steering(s, n_layers=L, d_model=D, engine="affine")
    assert plan_steering(s, n_layers=L, d_model=D).engine == "hook"  # auto falls back


def test_paper_default_goes_to_hook_with_payload():
    s = steering(layers=[1, 3])  # rotate, last_prompt, alpha 0.1
    plan = plan_steering(s, n_layers=L, d_model=D)
    assert plan.engine == "hook" and not plan.affine_specs
    payload = plan.worker_payload()
    assert payload["normalisation"] == "rotate" and payload["positions"] == "last_prompt"
    assert [e[0] for e in payload["edits"]] == [1, 3]
    assert all(isinstance(v, float) for v in payload["edits"][0][1])


def test_resid_pre_maps_to_previous_block_and_refuses_layer0():
    plan = plan_steering(steering(layers=[2], hook="resid_pre", normalisation="raw",
                                  positions="all"), n_layers=L, d_model=D)
    assert list(plan.affine_specs) == ["blocks.1.hook_out"]
    with pytest.raises(UnlockLensError, match="layer 0"):
        plan_steering(steering(layers=[0], hook="resid_pre"), n_layers=L, d_model=D)


def test_shape_and_engine_refusals():
    with pytest.raises(UnlockLensError, match="d_model"):
        plan_steering(steering(), n_layers=L, d_model=D + 1)
    with pytest.raises(UnlockLensError, match="out of range"):
        plan_steering(steering(), n_layers=2, d_model=D)
    with pytest.raises(UnlockLensError, match="engine"):
        plan_steering(steering(), n_layers=L, d_model=D, engine="tl")


def test_rows_to_edit_prefill_decode_and_chunked():
    # request 0: prefill of a 4-token prompt (rows 0-3); request 1: decode step at position 6
    # of a 5-token prompt (row 4); request 2: second chunk (positions 3-5) of a 6-token prompt.
    offsets, computed, plens = [0, 4, 5, 8], [0, 6, 3], [4, 5, 6]
    assert rows_to_edit(offsets, computed, plens, "last_prompt") == [3, 7]
    assert rows_to_edit(offsets, computed, plens, "prompt") == [0, 1, 2, 3, 5, 6, 7]
    assert rows_to_edit(offsets, computed, plens, "final") == [3, 4, 7]
    assert rows_to_edit(offsets, computed, plens, "all") == list(range(8))
    # a chunk that ends before the last prompt token edits nothing for last_prompt
    assert rows_to_edit([0, 3], [0], [6], "last_prompt") == []
    with pytest.raises(UnlockLensError):
        rows_to_edit(offsets, computed, plens, "everywhere")


def test_rows_match_torch_position_rules():
    """Simulate generation: prefill of P tokens then decode steps; compare with torch rules."""
    P, steps = 5, 3
    for positions, expect in {
        "last_prompt": {P - 1},
        "prompt": set(range(P)),
        "final": {P - 1, *range(P, P + steps)},
        "all": set(range(P + steps)),
    }.items():
        edited = {r for r in rows_to_edit([0, P], [0], [P], positions)}
        for k in range(steps):  # decode step k feeds position P + k
            if rows_to_edit([0, 1], [P + k], [P], positions):
                edited.add(P + k)
        assert edited == expect, positions


@pytest.mark.parametrize("norm", ["rotate", "unit", "resid", "raw"])
def test_apply_rows_fused_residual_exact(norm):
    hidden, residual = torch.randn(6, D), torch.randn(6, D)
    r = torch.randn(D)
    h2, res2 = apply_rows(hidden, residual, [1, 4], r, 0.2, norm)
    full = hidden + residual
    want = full.clone()
    want[[1, 4]] = edit_residual(full[[1, 4]], r, 0.2, norm)
    assert torch.allclose(h2 + res2, want, atol=1e-6)
    assert torch.equal(h2[[1, 4]], want[[1, 4]])  # edited rows exact, residual zeroed
    assert torch.equal(hidden + residual, full)  # inputs untouched
    same = apply_rows(hidden, residual, [], r, 0.2, norm)
    assert same[0] is hidden and same[1] is residual


def test_worker_hooks_on_a_fake_runner():
    """install_worker_hooks on a stand-in vLLM worker: rows from the runner's layout."""
    import numpy as np
    from torch import nn

    class Layer(nn.Module):
        def forward(self, x):
            return x * 1.0, torch.zeros_like(x)

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Layer() for _ in range(L)])

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()
            self.w = nn.Parameter(torch.zeros(1))

    class Batch:
        req_ids = ["a", "b"]
        num_computed_tokens_cpu = np.array([0, 7])
        num_prompt_tokens = np.array([3, 5])

    class Runner:
        model = Model()
        input_batch = Batch()
        query_start_loc = torch.tensor([0, 3, 4, 0, 0])

    class Worker:
        model_runner = Runner()

    worker, s = Worker(), steering(alpha=0.5, layers=[2])
    plan = plan_steering(s, n_layers=L, d_model=D)
    assert install_worker_hooks(worker, plan.worker_payload()) == 1
    x = torch.randn(4, D)
    hidden, res = worker.model_runner.model.model.layers[2](x)
    want = x.clone()
    want[2] = edit_residual(x[2], s.directions[2], 0.5, "rotate")  # request a's last prompt row
    assert torch.allclose(hidden + res, want, atol=1e-6)
    assert remove_worker_hooks(worker) == 1
    assert torch.equal(worker.model_runner.model.model.layers[2](x)[0], x)


def test_generator_without_vllm_says_how_to_install():
    pytest.importorskip("unlock_lens.backends.vllm")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(UnlockLensError, match="unlock-lens\\[vllm\\]"):
            VLLMSteeredGenerator("any-model")
    else:  # pragma: no cover - GPU machines
        pytest.skip("vllm is installed: the refusal path does not apply")
