"""``unlock-lens transfer-report`` and the API under it: per behaviour axis, both directions of a
model pair, how much of the target's own key's effect a transferred key reproduces
(:mod:`unlock_lens.diagnostics.axes_transfer`), resumable axis by axis, with an HTML report.

- ``run``: the settings (:class:`ReportSettings`), :func:`run_transfer_report` and its files;
- ``report``: the figures and the HTML page.

Names load lazily.
"""

import lazy_loader as lazy

__getattr__, __dir__, __all__ = lazy.attach_stub(__name__, __file__)
