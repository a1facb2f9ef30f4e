"""Training data for rerankers: schema validation, readers, grouping, pair encoding and collators."""

from rerankforge.data_tools.schema import DataValidationError, Issue, ValidationReport, validate_files
from rerankforge.data_tools.sources import load_train_dataset, resolve_data_files

__all__ = [
    "DataValidationError",
    "Issue",
    "ValidationReport",
    "load_train_dataset",
    "resolve_data_files",
    "validate_files",
]
