"""The error of a run that cannot go on."""


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, a run already in OUTPUT, a config that changed on resume)."""
