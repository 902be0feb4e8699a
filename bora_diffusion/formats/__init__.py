"""Adapter files: the native self-describing format (`native`), and later exports and imports of other layouts."""

from .native import AdapterFile, load_adapter, read_adapter, save_adapter

__all__ = ["AdapterFile", "load_adapter", "read_adapter", "save_adapter"]
