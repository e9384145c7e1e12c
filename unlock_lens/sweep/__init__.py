"""``unlock-lens sweep`` and the API under it: layer sets x rank x alpha x alignment method x
alignment data kind for one key and one pair, scored at the first token against the target's
CoT prompt with the native key and random-mapped directions as references, resumable cell by
cell, with an HTML report.

- ``run``: the grid (:class:`SweepGrid`), the settings, :func:`run_sweep` and the command;
- ``pair``: the models, formats, question sets, keys and layer maps a sweep steers with;
- ``report``: the heatmaps and the HTML page.

It sits above :mod:`unlock_lens.organisms` (the default pair). Names load lazily.
"""

import lazy_loader as lazy

__getattr__, __dir__, __all__ = lazy.attach_stub(__name__, __file__)
