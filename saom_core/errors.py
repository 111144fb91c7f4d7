"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class SaomError(Exception):
    """Base class: the message must name the file, key or value that is wrong."""


class DatasetError(SaomError):
    """A dataset directory, annotation file or entry is missing, corrupt or inconsistent."""


class ConfigError(SaomError):
    """A config file, key or value is unknown or invalid."""


class CheckpointError(SaomError):
    """A checkpoint is missing, unreadable or does not fit the chosen model config."""


class ImageError(SaomError):
    """An input image cannot be read or has an unsupported encoding."""


class SimulatorError(SaomError):
    """A simulator is unknown or cannot be started on this machine."""
