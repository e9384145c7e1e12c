"""The `paper` protocol against an independent re-implementation of the authors' pipeline.

The oracle below is written from ../shared/METHOD.md on plain `transformers` models and shares
no code with unlock_lens: its own copy of the two templates, HF tokenisation with the
checkpoint's default special tokens, `output_hidden_states=True` states (`hidden_states[1:]`,
so the last layer is post-final-norm), batch 1 without padding, its own SVD-subspace map, and
the rotate edit emulated by a forward hook on each decoder layer (one prefill pass, last
token). unlock_lens's `Unlock(..., protocol="paper")` must give the same key at every layer,
the same map at every target layer and the same steered first-token logits (1e-4), for llama,
qwen2 and gemma3; and must differ from it when any one protocol difference is switched back
to the library's choice (the oracle discriminates).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from unlock_lens import Unlock, final_logits, load_model
from unlock_lens.protocol import PAPER
from unlock_lens.random_models import build_random_model

# ---- the oracle (METHOD.md, nothing from unlock_lens) -----------------------------------------

DIRECT_TEMPLATE = 'Solve the following question and place the answer at the end. Your response should always end with "The final answer is <atok> [answer] </atok>." where [answer] is the correct solution to the problem.\n\nQuestion:\n{input}\n\nAnswer:\n'  # noqa: E501
COT_TEMPLATE = 'Reason step by step and give a final answer to the following question. Your response should always end with "The final answer is <atok> [answer] </atok>." where [answer] is the correct solution to the problem.\n\nQuestion:\n{input}\n\nAnswer: Let\'s think step by step.\n'  # noqa: E501


def oracle_states(model, tok, template: str, question: str) -> torch.Tensor:
    """[L, d]: `hidden_states[1:]` at the last prompt token, batch 1, no padding."""
    ids = tok(template.format(input=question).strip(" "), return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    return torch.stack([h[0, -1] for h in out.hidden_states[1:]]).float()


def oracle_key(locked, unlocked, tok, questions, locked_template, unlocked_template) -> torch.Tensor:
    diffs = [oracle_states(unlocked, tok, unlocked_template, q) - oracle_states(locked, tok, locked_template, q)
             for q in questions]
    return torch.stack(diffs).mean(0)


def oracle_maps(H_s: torch.Tensor, H_t: torch.Tensor, k: int) -> dict[int, torch.Tensor]:
    """W_t = V_s pinv(H_s V_s) (H_t V_t) V_t^T, uncentred, k clamped to min(k, n, d)."""
    n, L_s, d_s = H_s.shape
    _, L_t, d_t = H_t.shape
    k = min(k, n, d_s, d_t)
    maps = {}
    for t in range(L_t):
        s = min((L_s - 1) * t // (L_t - 1), L_s - 1)
        Vs = torch.linalg.svd(H_s[:, s], full_matrices=False).Vh[:k].T
        Vt = torch.linalg.svd(H_t[:, t], full_matrices=False).Vh[:k].T
        T = torch.linalg.pinv(H_s[:, s] @ Vs) @ (H_t[:, t] @ Vt)
        maps[t] = (s, Vs @ T @ Vt.T)
    return maps


def oracle_steered_logits(model, tok, template, question, directions, alpha) -> torch.Tensor:
    """First-token logits with h <- |h| (h^ + a r^)/|h^ + a r^| at every layer's last token."""
    def hook_for(r):
        r_hat = r / r.norm()

        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            last = h[:, -1]
            v = last / last.norm(dim=-1, keepdim=True) + alpha * r_hat
            h[:, -1] = last.norm(dim=-1, keepdim=True) * v / v.norm(dim=-1, keepdim=True)
            return output
        return hook

    handles = [layer.register_forward_hook(hook_for(directions[t]))
               for t, layer in enumerate(model.model.layers)]
    try:
        ids = tok(template.format(input=question).strip(" "), return_tensors="pt").input_ids
        with torch.no_grad():
            return model(ids).logits[0, -1].float()
    finally:
        for h in handles:
            h.remove()


def oracle_pipeline(paths: dict, questions: list[str], eval_questions: list[str], k: int, alpha: float,
                    model_driven: bool) -> dict:
    hf = {name: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval() for name, p in paths.items()}
    tok_s = AutoTokenizer.from_pretrained(paths["source"])
    tok_t = AutoTokenizer.from_pretrained(paths["target"])
    if model_driven:  # post-trained minus base, both CoT-prompted; target aligned and tested with CoT
        key = oracle_key(hf["source"], hf["source_unlocked"], tok_s, questions, COT_TEMPLATE, COT_TEMPLATE)
        align_template = target_template = COT_TEMPLATE
    else:
        key = oracle_key(hf["source"], hf["source"], tok_s, questions, DIRECT_TEMPLATE, COT_TEMPLATE)
        align_template = target_template = DIRECT_TEMPLATE
    H_s = torch.stack([oracle_states(hf["source"], tok_s, align_template, q) for q in questions])
    H_t = torch.stack([oracle_states(hf["target"], tok_t, align_template, q) for q in questions])
    maps = oracle_maps(H_s, H_t, k)
    directions = {t: key[s] @ W for t, (s, W) in maps.items()}
    logits = torch.stack([oracle_steered_logits(hf["target"], tok_t, target_template, q, directions, alpha)
                          for q in eval_questions])
    return {"key": key, "maps": {t: W for t, (_, W) in maps.items()}, "logits": logits}


# ---- unlock_lens under a protocol -------------------------------------------------------------

POOL = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "There are 12 birds on a tree and 4 fly away. How many are left? ",
    "A train goes 60 miles per hour for 2 hours. How far does it go?",
    "Each box holds 7 pens. How many pens are in 3 boxes?",
    "If x / 4 = 6, what is x?",
    "Sam had 10 dollars and spent 4. How much is left?",
    "What is 8 + 9 - 3?",
    "A baker makes 5 trays of 6 rolls. How many rolls is that?",
    "Half of 18 is what number?",
    "Ann reads 4 pages a day for 5 days. How many pages?",
]
EVAL = ["What is 2 + 3?", "Tom has 9 pens and gives 4 away. How many remain? "]
N, K, ALPHA = 5, 8, 0.3  # K > N: the authors' silent rank clamp (ours warns)
CHAT = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
# qwen2's bridge prepends no BOS where its HF tokenizer does; llama's and gemma3's the reverse
ADD_BOS = {"llama": False, "qwen2": True, "gemma3": False}


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma3"])
def models(request, tmp_path_factory):
    arch = request.param
    root = tmp_path_factory.mktemp(f"paper_oracle_{arch}")
    kw = dict(add_bos=ADD_BOS[arch], chat_template=CHAT, n_heads=4)
    paths = {
        "source": build_random_model(root / "source", arch, d_model=64, n_layers=3, seed=0, **kw),
        "source_unlocked": build_random_model(root / "source_u", arch, d_model=64, n_layers=3, seed=2, **kw),
        "target": build_random_model(root / "target", arch, d_model=48, n_layers=4, seed=1, **kw),
    }
    bridges = {name: load_model(str(p)) for name, p in paths.items()}
    return arch, paths, bridges


def unlock_lens_pipeline(bridges: dict, protocol, model_driven: bool) -> dict:
    pipe = Unlock(bridges["source"], bridges["target"], protocol=protocol, rank=K, alpha=ALPHA,
                  source_unlocked=bridges["source_unlocked"] if model_driven else None)
    key_qs, align_qs = protocol.question_sets(POOL, N, N)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        key = pipe.extract(key_qs)
        pack = pipe.align(key, align_qs)
    tv = pipe.target_variant
    logits = final_logits(bridges["target"], tv.prompts(EVAL), steering=pack.steering(),
                          special_tokens=tv.special_tokens)
    return {"key": key.directions, "maps": {t: m.weight for t, m in pack.maps.items()}, "logits": logits,
            "warnings": [str(w.message) for w in caught]}


def max_differences(ours: dict, oracle: dict) -> dict[str, float]:
    return {
        "key": float((ours["key"] - oracle["key"]).abs().max()),
        "maps": max(float((ours["maps"][t] - W).abs().max()) for t, W in oracle["maps"].items()),
        "logits": float((ours["logits"] - oracle["logits"]).abs().max()),
    }


@pytest.fixture(scope="module")
def oracles(models):
    _, paths, _ = models
    key_qs = POOL[-N:]  # the authors: the last n of the train split, for the key and the alignment
    return {md: oracle_pipeline(paths, key_qs, EVAL, K, ALPHA, model_driven=md) for md in (False, True)}


@pytest.mark.parametrize("model_driven", [False, True], ids=["prompt-driven", "model-driven"])
def test_paper_protocol_matches_the_oracle(models, oracles, model_driven):
    arch, _, bridges = models
    ours = unlock_lens_pipeline(bridges, PAPER, model_driven)
    oracle = oracles[model_driven]
    for name in ("key", "logits"):
        torch.testing.assert_close(ours[name], oracle[name], atol=1e-4, rtol=1e-4, msg=f"{arch} {name}")
    assert sorted(ours["maps"]) == sorted(oracle["maps"]) == [0, 1, 2, 3]
    for t, W in oracle["maps"].items():
        torch.testing.assert_close(ours["maps"][t], W, atol=1e-4, rtol=1e-4, msg=f"{arch} map {t}")
    assert any("clamped to 5" in w for w in ours["warnings"]), ours["warnings"]
    # the steering did something the comparison can see
    unsteered = final_logits(bridges["target"], Unlock(bridges["source"], bridges["target"], protocol=PAPER,
                             source_unlocked=bridges["source_unlocked"] if model_driven else None)
                             .target_variant.prompts(EVAL), special_tokens="tokenizer")
    assert float((unsteered - oracle["logits"]).abs().max()) > 1e-2


# which comparison each switched difference must break, and in which kind of run
SWITCHES = [
    ("prompts", False, "key"),
    ("chat", False, "key"),
    ("special_tokens", False, "key"),
    ("final_layer", False, "key"),
    ("shared_questions", False, "maps"),
    ("target_prompt", True, "maps"),
]


@pytest.mark.parametrize(("difference", "model_driven", "broken"), SWITCHES, ids=[s[0] for s in SWITCHES])
def test_oracle_discriminates_each_protocol_difference(models, oracles, difference, model_driven, broken):
    arch, _, bridges = models
    protocol = PAPER.switched(difference)
    assert protocol.differences(PAPER) == [difference]
    diffs = max_differences(unlock_lens_pipeline(bridges, protocol, model_driven), oracles[model_driven])
    assert diffs[broken] > 1e-3, (arch, difference, diffs)
    assert diffs["logits"] > 1e-4, (arch, difference, diffs)
