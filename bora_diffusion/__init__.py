"""bora-diffusion: concept tuning for Stable Diffusion with adapters that merge without concept bleeding."""

from .config import AdapterConfig
from .errors import AdapterFileError, BoraError, ConfigError, SlotError, TargetError

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig",
    "AdapterFileError",
    "BoraError",
    "ConfigError",
    "SlotError",
    "TargetError",
    "__version__",
]
