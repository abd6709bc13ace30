"""Errors that the CLI turns into one clear line instead of a traceback."""


class FastAdaptError(Exception):
    """A problem with the user's input or data; the message names the problem and the fix."""


class DataError(FastAdaptError):
    """A data set is missing, corrupt, or too small for the requested episodes."""


class ConfigError(FastAdaptError):
    """An unknown name, an impossible setting, or a checkpoint from another configuration."""


class TrainingDiverged(FastAdaptError):
    """The meta-loss became NaN or infinite."""


class OutputError(FastAdaptError, OSError):
    """An output could not be written (a full disk, a read-only folder, a folder another run holds)."""
