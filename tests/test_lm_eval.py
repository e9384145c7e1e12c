"""lm-evaluation-harness on a steered bridge: a local multiple-choice task, and a KV-cache oracle."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from unlock_lens.errors import UnlockLensError  # noqa: E402
from unlock_lens.lm_eval_adapter import SteeredHFLM  # noqa: E402
from unlock_lens.steer import Steering, edit_residual  # noqa: E402

DOCS = [
    {"question": "Tom has 3 apples and buys 5 more. How many?", "choices": [" 8", " 2", " 15"], "answer": 0},
    {"question": "There are 12 birds and 4 fly away. How many are left?", "choices": [" 16", " 8"], "answer": 1},
    {"question": "Each box holds 7 pens. How many pens in 3 boxes?", "choices": [" 21", " 10", " 4"], "answer": 0},
    {"question": "What is 100 minus 37?", "choices": [" 63 is the final answer", " 73"], "answer": 0},
]
LAYERS = (0, 2)


def _steering(d_model: int, positions: str = "last_prompt", alpha: float = 0.8) -> Steering:
    g = torch.Generator().manual_seed(5)
    return Steering({layer: torch.randn(d_model, generator=g) for layer in LAYERS}, alpha=alpha,
                    normalisation="rotate", positions=positions)


@pytest.fixture(scope="module")
def hf_llama(tiny_dirs):
    """The same tiny llama loaded as a plain HF model (no bridge): the reference."""
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"], attn_implementation="eager")
    return model.eval()


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_task")
    data = root / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (root / "tiny_mc.yaml").write_text(
        "task: unlock_tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n"
    )
    return root


def _loglikelihoods(lm, task_dir) -> list[float]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir), include_defaults=False)  # skip indexing ~10k tasks
    out = simple_evaluate(model=lm, tasks=["unlock_tiny_mc"], task_manager=manager, log_samples=True,
                          verbosity="ERROR")
    samples = sorted(out["samples"]["unlock_tiny_mc"], key=lambda s: s["doc_id"])
    return [float(r[0][0]) for s in samples for r in s["resps"]]


def test_task_run_unsteered_equals_plain_hf_and_steered_differs(tiny_models, hf_llama, task_dir):
    bridge = tiny_models["llama"]
    tok = bridge.tokenizer
    plain = _loglikelihoods(HFLM(pretrained=hf_llama, tokenizer=tok, batch_size=4), task_dir)
    ours = _loglikelihoods(SteeredHFLM(bridge, batch_size=4), task_dir)
    steered = _loglikelihoods(SteeredHFLM(bridge, steering=_steering(bridge.cfg.d_model), batch_size=4), task_dir)
    assert len(plain) == sum(len(d["choices"]) for d in DOCS)
    assert ours == pytest.approx(plain, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(steered, plain, strict=True)) > 1e-3
    assert all(not hp._forward_hooks for hp in bridge.hook_dict.values())


def _oracle(hf, steering: Steering, context_enc: list[int], continuation_enc: list[int]) -> float:
    """Generation semantics: prefill the context (edited per the position rule), then score the
    continuation through the KV cache (continuation positions edited only for final/all;
    final edits the last context token too, as the torch and vLLM engines do)."""
    phase = {"edit": None}

    def hook_for(layer):
        def hook(module, args, out):
            h = out[0] if isinstance(out, tuple) else out
            edit = phase["edit"]
            if edit is None:
                return out
            h = h.clone()
            sl = slice(-1, None) if edit == "last" else slice(None)
            h[:, sl] = edit_residual(h[:, sl], steering.directions[layer], steering.alpha, steering.normalisation)
            return (h, *out[1:]) if isinstance(out, tuple) else h
        return hook

    handles = [hf.model.layers[layer].register_forward_hook(hook_for(layer)) for layer in LAYERS]
    pos = steering.positions
    try:
        with torch.no_grad():
            phase["edit"] = {"last_prompt": "last", "prompt": "all", "all": "all", "final": "last"}[pos]
            pre = hf(torch.tensor([context_enc]), use_cache=True)
            logits = [pre.logits[0, -1]]
            if len(continuation_enc) > 1:
                phase["edit"] = "all" if pos in ("final", "all") else None
                rest = hf(torch.tensor([continuation_enc[:-1]]), past_key_values=pre.past_key_values)
                logits += list(rest.logits[0])
    finally:
        for h in handles:
            h.remove()
    logp = torch.log_softmax(torch.stack(logits).double(), -1)
    return float(sum(logp[i, t] for i, t in enumerate(continuation_enc)))


@pytest.mark.parametrize("positions", ["last_prompt", "prompt", "final", "all"])
def test_loglikelihood_edits_where_generation_would(tiny_models, hf_llama, positions):
    bridge = tiny_models["llama"]
    steering = _steering(bridge.cfg.d_model, positions)
    lm = SteeredHFLM(bridge, steering=steering, batch_size=3)
    pairs = [("Question: What is 2 + 3?\nAnswer:", " 5 because 2 + 3 = 5"),
             ("Question: Tom has 3 apples and buys 5 more. How many?\nAnswer:", " 8"),
             ("Question: 12 - 4 = ?\nAnswer:", " 8 birds")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    got = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    for (context, continuation), value in zip(pairs, got, strict=True):
        ctx_enc, cont_enc = lm._encode_pair(context, continuation)
        assert value == pytest.approx(_oracle(hf_llama, steering, ctx_enc, cont_enc), abs=2e-4)
        assert value != pytest.approx(_oracle(hf_llama, steering.scaled(0.0), ctx_enc, cont_enc), abs=1e-3)
    assert all(math.isfinite(v) for v in got)


def test_generate_until_is_steered_and_refusals(tiny_models):
    bridge = tiny_models["llama"]
    req = [Instance("generate_until", {}, ("Question: 3 + 5 =", {"until": ["\n"], "max_gen_toks": 6,
                                                                 "do_sample": False}), 0)]
    plain = SteeredHFLM(bridge, batch_size=1).generate_until(req, disable_tqdm=True)
    strong = _steering(bridge.cfg.d_model, "all", alpha=50.0)
    steered = SteeredHFLM(bridge, steering=strong, batch_size=1).generate_until(req, disable_tqdm=True)
    assert steered != plain
    with pytest.raises(UnlockLensError, match="needs a TransformerBridge"):
        SteeredHFLM(object())
    with pytest.raises(UnlockLensError, match="d_model"):
        SteeredHFLM(tiny_models["qwen2-deep"], steering=strong)
