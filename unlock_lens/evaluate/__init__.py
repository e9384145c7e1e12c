"""Evaluation data and answer checking: problem sets, leakage-free splits, answer matching,
the condition runner (direct / CoT prompt / steered / native key / random), statistics and
results tables. Names load lazily (``__init__.pyi`` lists them): the runner imports torch."""

import lazy_loader as lazy

# the public names are the imports in __init__.pyi (explicit for go-to-definition, linters
# and type checkers); lazy_loader loads each on first use, so importing one submodule does not
# load the model libraries
__getattr__, __dir__, __all__ = lazy.attach_stub(__name__, __file__)
