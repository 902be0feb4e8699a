"""The errors a user can cause. Each message names the file, field or layer at fault and says how to fix it.

Entry points (CLI, app) catch `BoraError` and show its message as one line; anything else is a bug.
"""


class BoraError(Exception):
    """Base class of every user-facing error of bora-diffusion."""


class ConfigError(BoraError, ValueError):
    """An option or config field has a value that cannot work."""


class TargetError(BoraError, ValueError):
    """A target pattern matched nothing, or matched something that is not a Linear."""


class SlotError(BoraError, ValueError):
    """Slot allocation failed: capacity exhausted, overlapping slots, or a malformed ledger."""


class ConceptError(BoraError, ValueError):
    """A concept folder (or several) has problems; `problems` lists each, the message names them all."""

    def __init__(self, message: str, problems: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class AdapterFileError(BoraError, ValueError):
    """An adapter file is corrupt, from a newer format, or made for another base model."""
