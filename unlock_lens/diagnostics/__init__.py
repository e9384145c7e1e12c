"""Diagnostics: what changed, where it acts, how alike the two models are.

- ``similarity``: principal angles, linear CKA (matrix over layers), CCA spectra, alignment
  fit quality, cosine to the target's native key (pure torch, no models).
- ``sharpening``: first-token entropy / top-k mass / KL between conditions (per item and as a
  per-condition summary), first and second word frequencies, output length, repetition,
  formatting failures.
- ``ablations``: layer / leave-one-out / band / rank / alpha / method sweeps on a KL proxy,
  with random-direction controls, reusing cached activations and logits.
- ``restricted_vocab``: first-token KL / entropy / p(reference top) / top-1 agreement against a
  reference, over the full vocabulary or the reference's top-k union plus a rest bucket.
- ``distribution_shift``: KL of the steered next-token distribution to the CoT-prompted one.
- ``cached_scoring``: first-token logits of many last-prompt-token steerings from one shared
  prefix KV cache (one one-position forward per configuration, or many configurations side
  by side in one forward: ``score_configurations``; teacher-forced continuations:
  ``score_continuations``).
- ``readout``: first-token measures of many configurations (KL, entropy, log q of tokens,
  argmax) with the vocabulary read out in chunks from the final states, no logits held
  (``readout_configurations``; what every sweep scores through).
- ``fidelity``: does a transferred key carry the behaviour? The likelihood fidelity test
  (``likelihood_fidelity`` / ``pack_fidelity``: F against >= 30 null directions, rank and
  direction-level p) and text agreement with the native key's outputs.

Names load lazily (``__init__.pyi`` lists them), so importing
``unlock_lens.diagnostics.similarity`` does not load model libraries.
"""

import lazy_loader as lazy

# the public names are the imports in __init__.pyi (explicit for go-to-definition, linters
# and type checkers); lazy_loader loads each on first use, so importing one submodule does not
# load the model libraries
__getattr__, __dir__, __all__ = lazy.attach_stub(__name__, __file__)
