"""The store: the only code that knows paths, Parquet schemas and atomic writes."""

from taskgrouping.storage.store import (
    AFFINITY_SCHEMA,
    GROUPS_SCHEMA,
    METRICS_SCHEMA,
    Store,
    atomic_write_bytes,
    atomic_write_table,
    read_table_checked,
)

__all__ = [
    "AFFINITY_SCHEMA",
    "GROUPS_SCHEMA",
    "METRICS_SCHEMA",
    "Store",
    "atomic_write_bytes",
    "atomic_write_table",
    "read_table_checked",
]
