"""Compatibility between TransformerLens 4.3's bridge and newer ``transformers`` releases.

transformers 5.24 renamed the KV-cache keyword that decoder layers hand to their attention
modules from ``past_key_values`` to ``cache``. The TransformerLens 4.3 bridge's attention
components read only ``past_key_values`` / ``layer_past``: under 5.24 the cache stays empty
after the prefill and every cached decode step attends to its own token alone (generation
ignores the prompt; single forward passes are unaffected).

:func:`bridge_kv_cache_keyword` renames the keyword back on the way into each attention
component, with a forward pre-hook on that model instance (no installed file or class is
changed). It attaches nothing where the model's attention modules do not take ``cache``
(transformers < 5.24), and it is idempotent. Delete this module once TransformerLens reads
the new keyword itself; ``tests/test_decoding_oracle.py`` will say whether it does.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

_MARK = "_unlock_lens_kv_keyword_hook"


def _takes_cache_keyword(module: torch.nn.Module) -> bool:
    """True when ``module.forward`` names ``cache`` as a parameter (transformers >= 5.24)."""
    try:
        return "cache" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _rename_cache(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if "cache" in kwargs and kwargs.get("past_key_values") is None:
        kwargs = dict(kwargs)
        kwargs["past_key_values"] = kwargs.pop("cache")
    return args, kwargs


def bridge_kv_cache_keyword(model: Any) -> int:
    """Make ``model``'s bridge attention components see the KV cache under ``cache=``.

    Returns the number of components given the hook by this call (0 when the installed
    transformers still says ``past_key_values``, when the model is no TransformerBridge, or
    when it was done before).
    """
    if getattr(model, _MARK, False):  # scanned before: generate() calls this on every use
        return 0
    try:
        from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
    except ImportError:  # another TransformerLens layout: nothing to bridge
        return 0
    modules = getattr(model, "modules", None)
    if modules is None:
        return 0
    done = 0
    for module in modules():
        if not isinstance(module, AttentionBridge) or getattr(module, _MARK, False):
            continue
        original = getattr(module, "original_component", None)
        if original is None or not _takes_cache_keyword(original):
            continue
        module.register_forward_pre_hook(_rename_cache, with_kwargs=True)
        setattr(module, _MARK, True)
        done += 1
    setattr(model, _MARK, True)
    return done
