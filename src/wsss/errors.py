"""Exception types whose messages name the offending file or key and say what to do."""

from __future__ import annotations


class WsssError(Exception):
    """Base class: every error the toolkit raises on purpose for bad user input."""


class ConfigError(WsssError, KeyError):
    """A recipe or override is invalid (unknown key, wrong type, unknown registry name)."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class DataError(WsssError, ValueError):
    """An input file (image, mask, list, tags, CAM file) is missing, corrupt or inconsistent."""


class CheckpointError(WsssError, RuntimeError):
    """A checkpoint does not fit the model it is loaded into."""


class NumericalError(WsssError, FloatingPointError):
    """A loss, gradient or CAM became NaN or infinite (``nonfinite: stop``); the message names the
    stage, step or image and what to change."""
