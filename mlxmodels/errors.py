"""Errors a user can cause, each carrying a one-line message that names the culprit.

The CLI prints `str(error)` and exits non-zero; only `--debug` shows a traceback. Anything that is
not an `OrchardError` is a bug in Orchard, not bad input.
"""


class OrchardError(Exception):
    """Bad input or an unusable environment, explained in one line."""


class ModelNotFoundError(OrchardError):
    """The model reference names nothing we can find (path, catalog name or hub repo)."""


class ConfigError(OrchardError):
    """config.json (or GGUF metadata) is missing, unreadable, or lacks a required field."""


class WeightsError(OrchardError):
    """Weight files are missing, corrupt, or do not match the config."""


class ContextLengthError(OrchardError):
    """The prompt (plus the tokens asked for) does not fit in the model's context."""


class OfflineError(OrchardError):
    """Something must be downloaded but the network (or the hub) cannot be reached."""
