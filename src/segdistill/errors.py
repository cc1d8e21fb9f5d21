"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class SegdistillError(Exception):
    """Base class: the message names the file, key or value that is wrong."""


class DataError(SegdistillError):
    """A data set file or folder is missing, corrupt or inconsistent."""


class ConfigError(SegdistillError):
    """A config key or value is unknown or invalid."""


class CheckpointError(SegdistillError):
    """A checkpoint is missing, corrupt or belongs to another architecture."""


class TrainingError(SegdistillError):
    """Training cannot go on (e.g. a NaN loss)."""
