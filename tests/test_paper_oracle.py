"""The `paper` protocol against an independent re-implementation of the authors' pipeline.

The oracle below is written from ../shared/METHOD.md on plain `transformers` models and shares
no code with unlock_lens: its own copy of the two templates, HF tokenisation with the
checkpoint's default special tokens (both prompts of a model-driven key with the post-trained
model's tokenizer), `output_hidden_states=True` states (`hidden_states[1:]`, so the last layer
is post-final-norm), batch 1 without padding, its own mean / PCA key and SVD-subspace map
(each side's rank clamped on its own; centred for a PCA key), the rotate edit emulated by a
forward hook on each decoder layer (one prefill pass, last token) and computed in the states'
dtype, and the authors' decoding (19 stop strings, 512 / 4096 tokens) applied to fixed
continuations. unlock_lens's `Unlock(..., protocol="paper")` must give the same key at every
layer, the same map at every target layer, the same steered first-token logits (1e-4), the
same bf16 edit (bit for bit) and the same decoded texts, for llama, qwen2 and gemma3; and must
differ from it when any one protocol difference is switched back to the library's choice (the
oracle discriminates; every difference of `unlock_lens.protocol.DIFFERENCES` is switched).
"""

from __future__ import annotations

import tomllib
import warnings
from dataclasses import replace
from importlib import resources

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from unlock_lens import Unlock, final_logits, load_model
from unlock_lens.align.layers import LayerPairing, fit_layer_maps
from unlock_lens.generation import finish
from unlock_lens.protocol import DIFFERENCES, PAPER
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


def oracle_key(locked, unlocked, tok, questions, locked_template, unlocked_template,
               aggregator: str = "mean") -> torch.Tensor:
    """[L, d]: the mean difference, or per layer the first right singular vector of the centred
    n x d difference matrix with its sign flipped to agree with the mean (METHOD §1). ``tok``
    tokenises both sides (a model-driven key: the post-trained model's)."""
    diffs = torch.stack([oracle_states(unlocked, tok, unlocked_template, q) - oracle_states(locked, tok, locked_template, q)
                         for q in questions])
    mean = diffs.mean(0)
    if aggregator == "mean":
        return mean
    rows = []
    for layer in range(diffs.shape[1]):
        v = torch.linalg.svd(diffs[:, layer] - mean[layer], full_matrices=False).Vh[0]
        rows.append(v if float(v @ mean[layer]) >= 0 else -v)
    return torch.stack(rows)


def oracle_maps(H_s: torch.Tensor, H_t: torch.Tensor, k: int, centered: bool = False) -> dict[int, tuple]:
    """W_t = V_s pinv(H_s V_s) (H_t V_t) V_t^T; each side's k clamped on its own, k_s = min(k, n, d_s)
    and k_t = min(k, n, d_t), as the authors' code does; centred states for a PCA key."""
    n, L_s, d_s = H_s.shape
    _, L_t, d_t = H_t.shape
    k_s, k_t = min(k, n, d_s), min(k, n, d_t)
    maps = {}
    for t in range(L_t):
        s = min((L_s - 1) * t // (L_t - 1), L_s - 1)
        Hs, Ht = H_s[:, s], H_t[:, t]
        if centered:
            Hs, Ht = Hs - Hs.mean(0), Ht - Ht.mean(0)
        Vs = torch.linalg.svd(Hs, full_matrices=False).Vh[:k_s].T
        Vt = torch.linalg.svd(Ht, full_matrices=False).Vh[:k_t].T
        T = torch.linalg.pinv(Hs @ Vs) @ (Ht @ Vt)
        maps[t] = (s, Vs @ T @ Vt.T)
    return maps


def oracle_edit(h: torch.Tensor, r: torch.Tensor, alpha: float) -> torch.Tensor:
    """h <- |h| (h^ + a r^)/|h^ + a r^| in h's own dtype: r cast with `type_as`, every step in it."""
    r_hat = r.type_as(h) / r.type_as(h).norm()
    v = h / h.norm(dim=-1, keepdim=True) + alpha * r_hat
    return h.norm(dim=-1, keepdim=True) * v / v.norm(dim=-1, keepdim=True)


def oracle_steered_logits(model, tok, template, question, directions, alpha) -> torch.Tensor:
    """First-token logits with the edit at every layer's last token (one prefill pass)."""
    def hook_for(r):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            h[:, -1] = oracle_edit(h[:, -1], r, alpha)
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


# the authors' stop strings in their order (METHOD §4, their base_class.py), and their budgets
AUTHORS_STOPS = ("</s>", "<|im_end|>", "<|endoftext|>", "assistant", "Assistant", "user", "_end", "_start",
                 "Question:", "Question", "Continuation", "Continuing", "Continues", "You are an AI",
                 "[Question]", "```", "I hope", "Subproblem", "</atok>")
AUTHORS_BUDGET = {False: 512, True: 4096}  # prompt-driven (CoT) runs; model-driven math runs, no stops
# fixed greedy continuations: each stop string the library once lacked, and two long runs for the budgets
CONTINUATIONS = [
    "3 + 5 = 8.\nSubproblem 2: what is 8 - 2?",
    "So 12 pens.\n\nYou are an AI assistant that answers questions.",
    "Let x_end = 4 and x_start = 1, so 3 steps.",
    "12 - 4 = 8 birds.\nContinuing, the next tree has 6.",
    "Assistant: the total is 15.",
    "The final answer is <atok> 8 </atok>. I hope this helps.",
    "9 + 9 = 18. " * 40 + "\nQuestion: what is 2 + 2?",
    "1 + 1 = 2. " * 900,
]


def oracle_decoded(tok, model_driven: bool) -> list[str]:
    """Each continuation cut at its budget, decoded, then at the earliest of the stop strings."""
    stops = () if model_driven else AUTHORS_STOPS
    out = []
    for text in CONTINUATIONS:
        decoded = tok.decode(tok(text, add_special_tokens=False).input_ids[:AUTHORS_BUDGET[model_driven]],
                             skip_special_tokens=True)
        found = [i for i in (decoded.find(s) for s in stops) if i >= 0]
        out.append(decoded[:min(found)] if found else decoded)
    return out


def oracle_pipeline(paths: dict, questions: list[str], eval_questions: list[str], k: int, alpha: float,
                    model_driven: bool, aggregator: str = "mean") -> dict:
    hf = {name: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval() for name, p in paths.items()}
    tok_s = AutoTokenizer.from_pretrained(paths["source"])
    tok_t = AutoTokenizer.from_pretrained(paths["target"])
    if model_driven:  # post-trained minus base, both CoT-prompted with the post-trained tokenizer
        tok_u = AutoTokenizer.from_pretrained(paths["source_unlocked"])
        key = oracle_key(hf["source"], hf["source_unlocked"], tok_u, questions, COT_TEMPLATE, COT_TEMPLATE, aggregator)
        align_template = target_template = COT_TEMPLATE  # the target aligned and tested with CoT
    else:
        key = oracle_key(hf["source"], hf["source"], tok_s, questions, DIRECT_TEMPLATE, COT_TEMPLATE, aggregator)
        align_template = target_template = DIRECT_TEMPLATE
    H_s = torch.stack([oracle_states(hf["source"], tok_s, align_template, q) for q in questions])
    H_t = torch.stack([oracle_states(hf["target"], tok_t, align_template, q) for q in questions])
    maps = oracle_maps(H_s, H_t, k, centered=aggregator == "pca")
    directions = {t: key[s] @ W for t, (s, W) in maps.items()}
    logits = torch.stack([oracle_steered_logits(hf["target"], tok_t, target_template, q, directions, alpha)
                          for q in eval_questions])
    return {"key": key, "maps": {t: W for t, (_, W) in maps.items()}, "logits": logits, "alpha": alpha,
            "decoded": oracle_decoded(tok_t, model_driven)}


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


def word_problems(n: int) -> list[str]:
    """n distinct short questions (a pool larger than a model's width)."""
    names, items = ["Tom", "Ann", "Sam", "Lea", "Max"], ["apples", "pens", "books", "coins"]
    return [f"{names[i % 5]} has {i + 2} {items[i % 4]} and buys {3 * i % 11 + 1} more. How many {items[i % 4]} now?"
            for i in range(n)]


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma3"])
def models(request, tmp_path_factory):
    arch = request.param
    root = tmp_path_factory.mktemp(f"paper_oracle_{arch}")
    kw = dict(chat_template=CHAT, n_heads=4)
    paths = {  # the post-trained source's tokenizer differs from the base's in BOS
        "source": build_random_model(root / "source", arch, d_model=64, n_layers=3, seed=0,
                                     add_bos=ADD_BOS[arch], **kw),
        "source_unlocked": build_random_model(root / "source_u", arch, d_model=64, n_layers=3, seed=2,
                                              add_bos=not ADD_BOS[arch], **kw),
        "target": build_random_model(root / "target", arch, d_model=48, n_layers=4, seed=1,
                                     add_bos=ADD_BOS[arch], **kw),
    }
    bridges = {name: load_model(str(p)) for name, p in paths.items()}
    return arch, paths, bridges


def library_edit(pack, model) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per target layer: (fixed bf16 states, the pack's steering hook's output on them as in a
    prefill, the pack's direction there)."""
    steering = pack.steering()
    hooks = steering.fwd_hooks(model)
    steering.reset()
    states = (4 * torch.randn(2, 7, pack.target.d_model, generator=torch.Generator().manual_seed(0))).bfloat16()
    directions = pack.target_directions()
    return {t: (states, fn(states.clone(), None), directions[t])
            for t, (_, fn) in zip(steering.active_layers, hooks, strict=True)}


def library_decoded(protocol, contrast: str, tokenizer) -> list[str]:
    """The protocol's decoding (budget, stop strings) on the fixed continuations, as `generate`
    finishes a row."""
    decoding = protocol.decoding_for(contrast)
    return [finish(tokenizer, "", tokenizer(text, add_special_tokens=False)["input_ids"][:decoding.max_new_tokens],
                   decoding.stop_strings).text for text in CONTINUATIONS]


def unlock_lens_pipeline(bridges: dict, protocol, model_driven: bool, questions: list[str] | None = None,
                         **settings) -> dict:
    """``settings``: Unlock's rank / alpha / aggregator (default: K and ALPHA; None: the protocol's)."""
    settings = {"rank": K, "alpha": ALPHA, **settings}
    pipe = Unlock(bridges["source"], bridges["target"], protocol=protocol,
                  source_unlocked=bridges["source_unlocked"] if model_driven else None, **settings)
    key_qs, align_qs = protocol.question_sets(questions or POOL, N if questions is None else len(questions))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        key = pipe.extract(key_qs)
        pack = pipe.align(key, align_qs)
    tv = pipe.target_variant
    logits = final_logits(bridges["target"], tv.prompts(EVAL), steering=pack.steering(),
                          special_tokens=tv.special_tokens)
    return {"key": key.directions, "maps": {t: m.weight for t, m in pack.maps.items()}, "logits": logits,
            "pipe": pipe, "pack": pack, "edit": library_edit(pack, bridges["target"]),
            "decoded": library_decoded(protocol, pipe.contrast, bridges["target"].tokenizer),
            "warnings": [str(w.message) for w in caught]}


def max_differences(ours: dict, oracle: dict) -> dict[str, float]:
    """Max abs differences (key, maps, logits), bf16 edit entries that differ, continuations
    decoded differently."""
    return {
        "key": float((ours["key"] - oracle["key"]).abs().max()),
        "maps": max(float((ours["maps"][t] - W).abs().max()) for t, W in oracle["maps"].items()),
        "logits": float((ours["logits"] - oracle["logits"]).abs().max()),
        "edit": float(sum(int((out[:, -1] != oracle_edit(h[:, -1], r, oracle["alpha"])).sum())
                          + int((out[:, :-1] != h[:, :-1]).sum()) for h, out, r in ours["edit"].values())),
        "decoding": float(sum(a != b for a, b in zip(ours["decoded"], oracle["decoded"], strict=True))),
    }


def assert_agrees(ours: dict, oracle: dict, what: str, map_tol: float = 1e-4) -> None:
    for name in ("key", "logits"):
        torch.testing.assert_close(ours[name], oracle[name], atol=1e-4, rtol=1e-4, msg=f"{what} {name}")
    assert sorted(ours["maps"]) == sorted(oracle["maps"])
    for t, W in oracle["maps"].items():
        torch.testing.assert_close(ours["maps"][t], W, atol=map_tol, rtol=map_tol, msg=f"{what} map {t}")
    diffs = max_differences(ours, oracle)
    assert diffs["edit"] == 0, (what, "bf16 edit", diffs)
    assert ours["decoded"] == oracle["decoded"], what


@pytest.fixture(scope="module")
def oracles(models):
    _, paths, _ = models
    key_qs = POOL[-N:]  # the authors: the last n of the train split, for the key and the alignment
    return {md: oracle_pipeline(paths, key_qs, EVAL, K, ALPHA, model_driven=md) for md in (False, True)}


@pytest.mark.parametrize("model_driven", [False, True], ids=["prompt-driven", "model-driven"])
def test_paper_protocol_matches_the_oracle(models, oracles, model_driven):
    arch, _, bridges = models
    ours = unlock_lens_pipeline(bridges, PAPER, model_driven)
    assert_agrees(ours, oracles[model_driven], arch)
    assert sorted(ours["maps"]) == [0, 1, 2, 3]
    assert any("clamped to 5" in w for w in ours["warnings"]), ours["warnings"]
    # the steering did something the comparison can see
    unsteered = final_logits(bridges["target"], ours["pipe"].target_variant.prompts(EVAL), special_tokens="tokenizer")
    assert float((unsteered - oracles[model_driven]["logits"]).abs().max()) > 1e-2
    # the decoding comparison cuts: every continuation at a stop string or the budget (prompt-driven);
    # only the one longer than 4096 tokens (model-driven)
    cut = [len(t) < len(c) for t, c in zip(oracles[model_driven]["decoded"], CONTINUATIONS, strict=True)]
    assert cut == [not model_driven] * (len(CONTINUATIONS) - 1) + [True]


@pytest.mark.parametrize("model_driven", [False, True], ids=["prompt-driven", "model-driven"])
def test_pca_key_and_centred_maps_match_the_oracle(models, model_driven):
    """PCA key (sign-aligned with the mean difference) and centred maps, at a rank below n (at
    rank n a centred map is unstable in the authors' own code)."""
    arch, paths, bridges = models
    n, k = 8, 4
    questions = POOL[-n:]
    oracle = oracle_pipeline(paths, questions, EVAL, k, ALPHA, model_driven, aggregator="pca")
    ours = unlock_lens_pipeline(bridges, PAPER, model_driven, questions, rank=k, aggregator="pca")
    assert_agrees(ours, oracle, f"{arch} pca")
    assert all(m.centered for m in ours["pack"].maps.values())
    # an uncentred map, or the key's other sign, does not pass
    uncentred = ours["pipe"].align(ours["pipe"].extract(questions), questions,
                                   spec=replace(ours["pipe"].spec, centered=False))
    assert max(float((uncentred.maps[t].weight - W).abs().max()) for t, W in oracle["maps"].items()) > 1e-3
    assert float((-ours["key"] - oracle["key"]).abs().max()) > 1e-2


def test_protocol_defaults_match_the_recipes():
    """rank, alpha and n of the `paper` protocol and its recipes against the authors' grids (METHOD §2-4)."""
    n_grid = (4, 16, 32, 64, 128, 256, 512)
    rank_grid = {"prompt": (1, 4, 16, 64, 128, 256, 512), "model": (1, 4, 16, 32, 64)}
    alpha_grid = (0.05, 0.1, 0.2, 0.5)
    assert PAPER.alpha == 0.1 and PAPER.alpha in alpha_grid
    assert all(PAPER.align.rank in grid for grid in rank_grid.values())
    assert (PAPER.align.method, PAPER.align.data, PAPER.aggregator) == ("svd", "last", "mean")
    assert [PAPER.decoding_for(c).max_new_tokens for c in ("prompt", "model")] == [512, 4096]
    for recipe in resources.files("unlock_lens.recipes").iterdir():
        if not recipe.name.endswith(".toml"):
            continue
        d = tomllib.loads(recipe.read_text())
        contrast = "model" if "source_unlocked" in d["models"] else "prompt"
        assert d.get("protocol", "paper") == "paper", recipe.name
        assert tuple(d["grid"]["n"]) == n_grid, recipe.name
        assert tuple(d["grid"]["rank"]) == rank_grid[contrast], recipe.name
        assert tuple(d["grid"]["alpha"]) == alpha_grid, recipe.name
        assert d["decoding"]["max_new_tokens"] == PAPER.decoding_for(contrast).max_new_tokens, recipe.name


def test_protocol_defaults_match_the_oracle(models):
    """Unlock under `paper` with no rank or alpha given: the oracle at k = 16, alpha = 0.1, on
    more questions than that rank (so the default rank is not hidden by a clamp)."""
    arch, paths, bridges = models
    questions = word_problems(24)
    oracle = oracle_pipeline(paths, questions, EVAL, 16, 0.1, model_driven=False)
    ours = unlock_lens_pipeline(bridges, PAPER, False, questions, rank=None, alpha=None)
    assert (ours["pipe"].rank, ours["pipe"].alpha) == (16, 0.1)
    # rank 16 on 24 rows reaches small singular values: maps agree to 7e-5 (qwen2), 2e-6 elsewhere
    assert_agrees(ours, oracle, f"{arch} defaults", map_tol=1e-3)
    assert not any("clamped" in w for w in ours["warnings"])


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """qwen2, source d = 64 -> target d = 96: n = 80 questions lie above the source's width."""
    root = tmp_path_factory.mktemp("paper_oracle_wide")
    kw = dict(chat_template=CHAT, n_heads=4, add_bos=True)
    paths = {"source": build_random_model(root / "source", "qwen2", d_model=64, n_layers=3, seed=0, **kw),
             "target": build_random_model(root / "target", "qwen2", d_model=96, n_layers=4, seed=1, **kw)}
    paths["source_unlocked"] = paths["source"]  # unused: a prompt-driven key
    return paths, {name: load_model(str(p)) for name, p in paths.items()}


def test_rank_is_clamped_per_side_above_a_width(wide):
    """n = 80, d 64 -> 96, rank 96: the authors use k_s = min(n, d_s, k) = 64 and
    k_t = min(n, d_t, k) = 80; one k = 64 on both sides gives another map.

    The numbers are compared on well-conditioned states (Gaussian rows): a full source basis of
    tiny random models' last-token states is so ill-conditioned (cond ~1e5) that the oracle
    disagrees with itself between float32 and float64 by up to 94%. The pipeline is then checked
    to fit exactly those per-side ranks on real captures."""
    gen = torch.Generator().manual_seed(0)
    H_s, H_t = torch.randn(80, 3, 64, generator=gen), torch.randn(80, 4, 96, generator=gen)
    oracle = oracle_maps(H_s, H_t, 96)
    in_float64 = oracle_maps(H_s.double(), H_t.double(), 96)
    assert max(float((W.double() - in_float64[t][1]).norm() / in_float64[t][1].norm())
               for t, (_, W) in oracle.items()) < 1e-5  # a well-posed comparison
    pairing = LayerPairing.by_depth(3, 4)
    spec = replace(PAPER.align, rank=96, centered=False)
    with pytest.warns(UserWarning, match=r"clamped to 64 \(source\) and 80 \(target\)"):
        ours = fit_layer_maps(H_s, H_t, pairing, spec)
    for t, (s, W) in oracle.items():
        assert ours[t].source_layer == s and tuple(ours[t].core.shape) == (64, 80)
        torch.testing.assert_close(ours[t].weight, W, atol=1e-4, rtol=1e-4, msg=f"map {t}")
    with pytest.warns(UserWarning, match="clamped to 64"):
        joint = fit_layer_maps(H_s, H_t, pairing, replace(spec, rank_clamp="joint"))
    assert min(float((joint[t].weight - W).norm() / W.norm()) for t, (_, W) in oracle.items()) > 1e-2

    _, bridges = wide
    questions = word_problems(80)
    ours = unlock_lens_pipeline(bridges, PAPER, False, questions, rank=96)
    assert {tuple(m.core.shape) for m in ours["pack"].maps.values()} == {(64, 80)}
    assert ours["pack"].alignment["rank_clamp"] == "per_side"
    assert any("clamped to 64 (source) and 80 (target)" in w for w in ours["warnings"]), ours["warnings"]


# which comparison each switched difference must break, and in which kind of run
SWITCHES = [
    ("prompts", False, "key"),
    ("chat", False, "key"),
    ("special_tokens", False, "key"),
    ("final_layer", False, "key"),
    ("shared_questions", False, "maps"),
    ("target_prompt", True, "maps"),
    ("alignment", False, "maps"),
    ("key_tokenizer", True, "key"),
    ("edit_dtype", False, "edit"),
    ("decoding", False, "decoding"),
    ("decoding", True, "decoding"),
]


def test_every_difference_is_switched():
    assert sorted({s[0] for s in SWITCHES}) == sorted(DIFFERENCES)


@pytest.mark.parametrize(("difference", "model_driven", "broken"), SWITCHES,
                         ids=[f"{s[0]}-{'model' if s[1] else 'prompt'}" for s in SWITCHES])
def test_oracle_discriminates_each_protocol_difference(models, oracles, difference, model_driven, broken):
    arch, _, bridges = models
    protocol = PAPER.switched(difference)
    assert protocol.differences(PAPER) == [difference]
    diffs = max_differences(unlock_lens_pipeline(bridges, protocol, model_driven), oracles[model_driven])
    assert diffs[broken] > 1e-3, (arch, difference, diffs)
    if broken in ("key", "maps"):
        assert diffs["logits"] > 1e-4, (arch, difference, diffs)
