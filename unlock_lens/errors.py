"""Exceptions raised by unlock_lens. Each message names the problem and the fix."""


class UnlockLensError(ValueError):
    """Base class: bad input or a state the library refuses to continue from."""


class ArtifactError(UnlockLensError):
    """A saved key, map, pack or results file is missing, damaged, or of an unknown format."""


class ModelMismatchError(UnlockLensError):
    """An artefact was made for a model with another shape, id or weight mode."""


class SanityCheckError(UnlockLensError):
    """A condition the run knows must hold does not (e.g. the organisms' trigger row near 100%):
    the numbers it would print are wrong, so it stops instead."""
