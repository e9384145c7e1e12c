"""The multi-device path on a CPU-only machine: ``device_map`` loading and per-device directions.

A real multi-GPU run is not possible here; these check the two pieces it relies on: a model
loaded through accelerate's ``device_map`` behaves as the plain load, and each steering hook
moves its direction to the device (and works in the dtype) of the activation it edits.
"""

import torch

from unlock_lens.activations import capture
from unlock_lens.generation import generate
from unlock_lens.models import load_model
from unlock_lens.steer import Steering

PROMPTS = ["Tom has 3 apples and buys 5 more.", "Each box holds 7 pens. How many in 3 boxes?"]


def _steering(model) -> Steering:
    g = torch.Generator().manual_seed(0)
    dirs = {layer: torch.randn(int(model.cfg.d_model), generator=g) for layer in range(int(model.cfg.n_layers))}
    return Steering(dirs, alpha=0.5, normalisation="rotate", positions="last_prompt")


def test_device_map_auto_matches_the_plain_load(tiny_dirs, tiny_models):
    plain = tiny_models["llama"]
    mapped = load_model(tiny_dirs["llama"], device_map="auto")
    assert str(mapped.cfg.device) == "cpu"
    torch.testing.assert_close(capture(mapped, PROMPTS), capture(plain, PROMPTS))
    kw = dict(max_new_tokens=12, steering=_steering(plain))
    assert [g.text for g in generate(mapped, PROMPTS, **kw)] == [g.text for g in generate(plain, PROMPTS, **kw)]


def test_hook_moves_the_direction_to_each_activation_device_and_dtype():
    steering = Steering({0: torch.ones(8), 1: torch.ones(8)}, alpha=1.0, normalisation="raw",
                        positions="all")
    hook0, hook1 = steering._hook(0), steering._hook(1)
    on_meta = hook0(torch.zeros(2, 3, 8, device="meta"), None)  # a layer on another device
    assert on_meta.device.type == "meta" and on_meta.shape == (2, 3, 8)
    half = hook1(torch.zeros(2, 3, 8, dtype=torch.bfloat16), None)
    assert half.dtype == torch.bfloat16 and torch.equal(half, torch.ones(2, 3, 8, dtype=torch.bfloat16))
