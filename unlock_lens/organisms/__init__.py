"""Model organisms: tiny trained transformers with a known, locked capability.

A family of small models (different depth, width, architecture and seed) trained on one
synthetic task (:mod:`unlock_lens.organisms.task`): chains of mod-10 operations that they
answer poorly in one step but well when they write intermediate values first. Without the
``STEP`` trigger they answer short chains directly (locked); with it, step by step (unlocked);
long chains they always solve step by step. ``chain-s-post`` is ``chain-s`` fine-tuned on
trigger-free step-by-step data (the model-driven contrast).

The weights ship in ``unlock_lens/organisms/zoo/<name>/`` as standard Hugging Face
directories, so they load exactly like hub models::

    from unlock_lens.organisms import load_organism, LOCKED, UNLOCKED, generate_questions
    model = load_organism("chain-s")                 # a TransformerBridge (via load_model)

Retrain with ``python -m unlock_lens.organisms.train``; see ``run_demo`` for the pipeline.
"""

import lazy_loader as lazy

# every public name is an import in __init__.pyi; each loads on first use (run_demo pulls in
# the generation stack, the task names do not)
__getattr__, __dir__, __all__ = lazy.attach_stub(__name__, __file__)
