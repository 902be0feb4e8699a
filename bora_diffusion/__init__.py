"""bora-diffusion: concept tuning for Stable Diffusion with adapters that merge without concept bleeding.

The public API lives in the submodules: `adapters` (the methods), `inject` (wrap_linear and model-wide concepts), `slots`, `formats`,
`concept`, `train`, `merge`, `generate`, `pipeline`. Importing this package stays light (no diffusers).
"""

from .config import AdapterConfig, TrainConfig
from .errors import AdapterFileError, BoraError, ConceptError, ConfigError, SlotError, TargetError

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig",
    "AdapterFileError",
    "BoraError",
    "ConceptError",
    "ConfigError",
    "SlotError",
    "TargetError",
    "TrainConfig",
    "__version__",
]
