"""Importers and exporters for other block-library formats."""

from .modelopt import import_modelopt
from .nvlabs import export_nvlabs, import_nvlabs

__all__ = ["import_nvlabs", "export_nvlabs", "import_modelopt"]
