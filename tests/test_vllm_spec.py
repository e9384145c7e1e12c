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
    assert install_worker_hooks(worker, plan.worker_payload()) == [2]
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


class TorchStandIn:
    """``VLLMSteeredGenerator``'s interface over the torch bridge: plans the steering as the
    real one does (refusals included), then runs greedy generation on the given token ids."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def generate(self, prompt_token_ids, *, steering=None, max_new_tokens=128, stop_strings=()):
        from contextlib import nullcontext

        cfg = self.model.cfg
        if steering is not None:
            plan_steering(steering, n_layers=int(cfg.n_layers), d_model=int(cfg.d_model), engine="hook")
        self.calls.append(len(prompt_token_ids))
        pad = self.model.tokenizer.pad_token_id
        longest = max(len(r) for r in prompt_token_ids)
        ids = torch.tensor([[pad] * (longest - len(r)) + r for r in prompt_token_ids])
        mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in prompt_token_ids])
        ctx = steering.applied(self.model) if steering is not None else nullcontext()
        with torch.inference_mode(), ctx:
            out = self.model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                      do_sample=False, stop_at_eos=True,
                                      stop_strings=list(stop_strings) or None,
                                      return_type="tokens", verbose=False)
        return out[:, longest:].tolist()


def test_runner_on_the_vllm_engine_matches_the_torch_rows(tiny_models, tmp_path):
    import json

    from unlock_lens.evaluate import load_jsonl
    from unlock_lens.evaluate.runner import Decoding, evaluate
    from unlock_lens.unlock import Unlock

    src, tgt = tiny_models["qwen2"], tiny_models["llama"]
    questions = [f"Sara reads {a} pages a day for {b} days. How many pages?" for a, b in
                 [(3, 4), (10, 2), (7, 7), (12, 5), (9, 3), (20, 6), (8, 8), (2, 9)]]
    pack = Unlock(source=src, target=tgt, rank=3, alpha=0.5).run(questions[:3], questions[3:])
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"id": f"e{i}", "q": f"Ann has {i} cats and {i + 2} dogs. "
                                        "How many pets?", "a": str(2 * i + 2)}) + "\n" for i in range(4)))
    problems = load_jsonl(path, question_field="q", answer_field="a", id_field="id", name="toy")
    kw = dict(conditions=("direct", "steered", "random"), pack=pack, seeds=(0,))
    torch_rows = evaluate(tgt, problems, decoding=Decoding(max_new_tokens=8, batch_size=8), **kw).rows
    stand_in = TorchStandIn(tgt)
    vllm_rows = evaluate(tgt, problems, decoding=Decoding(max_new_tokens=8, batch_size=8, engine="vllm"),
                         vllm=stand_in, **kw).rows
    assert stand_in.calls == [4, 4, 4]  # one call per condition, all prompts at once
    drop = {"first_token_entropy"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in vllm_rows] == \
        [{k: v for k, v in r.items() if k not in drop} for r in torch_rows]
    assert all(r["first_token_entropy"] != r["first_token_entropy"] for r in vllm_rows)  # NaN
    with pytest.raises(UnlockLensError, match="go together"):
        evaluate(tgt, problems, decoding=Decoding(engine="vllm"), **kw)
    with pytest.raises(UnlockLensError, match="stop_loops"):
        Decoding(engine="vllm", stop_loops=True)
