"""User-facing errors.

Every error a user can cause (bad paths, malformed data, unreadable images, bad options, stale caches) is a
:class:`SegclipError`; the command line prints its message without a traceback. Programming errors (wrong tensor
shapes passed between internal functions) stay ``ValueError`` / ``TypeError``.
"""


class SegclipError(Exception):
    """Base class of every user-facing segclip error; its message says what is wrong and how to fix it."""


class DataError(SegclipError):
    """A dataset is missing, incomplete or malformed (missing files, label values out of range, size mismatch)."""


class ImageError(SegclipError):
    """An image file is missing, unreadable, corrupt, truncated or in an unsupported format."""


class ModelError(SegclipError):
    """A model or its weights cannot be found, loaded or matched to the requested architecture."""


class ConfigError(SegclipError):
    """An option, configuration file or class list is invalid."""


class CacheError(SegclipError):
    """A cached artifact (calibration, text embeddings, partial results) is unreadable or does not match."""


class OutputError(SegclipError):
    """A result or artifact cannot be written (full disk, permissions), or would replace an input or an earlier
    result without ``--overwrite``."""
