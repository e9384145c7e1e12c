"""Behaviour axes as data: ``axes.toml`` lists each axis (instruction, scorer, threshold); an
:class:`Axis` gives its locked / unlocked prompt formats and scores generated text; the scorers
use maintained libraries where one exists (VADER, py3langid, textstat) and short rules otherwise;
``pool`` holds the neutral requests the formats wrap, split key / align / dev / eval by
fingerprint. Names load lazily (``__init__.pyi`` lists them)."""

import lazy_loader as lazy

__getattr__, __dir__, __all__ = lazy.attach_stub(__name__, __file__)
