"""taskgrouping: decide which machine-learning tasks to train together.

The core method is SWOLA (sample-wise optimisation landscape analysis, Thakur et
al., 2024); groups come from graph-based clustering of its task affinity, and one
hard-parameter-sharing model is trained per group. The pipeline runs as a cached
Prefect flow with probes on Dask workers.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
