"""Adapter files: the native self-describing format (`native`), and later exports and imports of other layouts."""

from .convert import ImportReport, detect_layout, import_lora
from .diffusers_lora import export_diffusers
from .embedding import embedding_path, export_embedding
from .factors import NotExportableError, exact_lora_factors
from .kohya import export_kohya
from .native import AdapterFile, load_adapter, read_adapter, save_adapter

__all__ = ["AdapterFile", "load_adapter", "read_adapter", "save_adapter"]
__all__ += [
    "ImportReport",
    "NotExportableError",
    "detect_layout",
    "embedding_path",
    "exact_lora_factors",
    "export_diffusers",
    "export_embedding",
    "export_kohya",
    "import_lora",
]
