"""Load, validate and sample datasets; the built-in datasets."""

from taskgrouping.data.dataset import Dataset, PreparedData, TaskSpec, prepare
from taskgrouping.data.load import load_dataset

__all__ = ["Dataset", "PreparedData", "TaskSpec", "load_dataset", "prepare"]
