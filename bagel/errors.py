"""Errors raised for bad input. Each names the file, key, field or value at fault."""


class BagelError(Exception):
    """Base class: bad input the caller can fix (exit code 2 in the CLI)."""


class CheckpointError(BagelError):
    """A checkpoint folder, config or weight file is missing, malformed or mismatched."""


class ImageError(BagelError):
    """An image cannot be read, or cannot be brought to a size the model accepts."""


class InputError(BagelError, ValueError):
    """A text, parameter or tensor argument is out of range or of the wrong shape."""
