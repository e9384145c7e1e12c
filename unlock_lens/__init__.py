"""unlock_lens: extract a capability direction from one model, carry it to another, steer.

The method (UNLOCK): extract a MasterKey → align it into a target (LayerMap per layer) →
steer the target. The public names are listed in ``__init__.pyi``.
"""

import lazy_loader as lazy

# the public names are the imports in __init__.pyi (explicit for go-to-definition, linters
# and type checkers); lazy_loader loads each on first use, so importing one submodule does not
# load the model libraries
__getattr__, __dir__, __all__ = lazy.attach_stub(__name__, __file__)
