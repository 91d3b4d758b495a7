"""taskgrouping: decide which machine-learning tasks to train together.

The core method is SWOLA (sample-wise optimisation landscape analysis, Thakur et
al., 2024); groups come from graph-based clustering of its task affinity, and one
hard-parameter-sharing model is trained per group. The pipeline runs as a cached
Prefect flow with probes on Dask workers.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "TaskGrouper", "RunSummary", "run", "evaluate", "select", "swola_affinity", "load_group_model",
           "GroupPredictor", "InputError"]

if TYPE_CHECKING:
    from taskgrouping.api import RunSummary, TaskGrouper, evaluate, run, select, swola_affinity
    from taskgrouping.errors import InputError
    from taskgrouping.models.export import GroupPredictor, load_group_model


def __getattr__(name: str) -> Any:
    """Import torch-backed names on first use, so ``import taskgrouping`` stays light."""
    if name in ("TaskGrouper", "RunSummary", "run", "evaluate", "select", "swola_affinity"):
        from taskgrouping import api

        return getattr(api, name)
    if name in ("load_group_model", "GroupPredictor"):
        from taskgrouping.models import export

        return getattr(export, name)
    if name == "InputError":
        from taskgrouping.errors import InputError

        return InputError
    raise AttributeError(f"module 'taskgrouping' has no attribute {name!r}")
