"""The run configuration: one typed object that the CLI, the flow and the tests all build."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from taskgrouping.errors import InputError
from taskgrouping.methods import check_method
from taskgrouping.methods.swola import SwolaSettings
from taskgrouping.models.train import TrainSettings
from taskgrouping.selectors import get_selector


@dataclass(frozen=True)
class RunConfig:
    """Everything a ``regroup`` run needs. Flow parameters are this object's dict form.

    ``groups`` is ``None`` for automatic choice of the number of groups.
    """

    data: str = "builtin:digits"
    tasks: str | None = None
    features: str | None = None
    method: str = "swola"
    selector: str = "spectral"
    groups: int | None = None
    samples: int = 512
    seed: int = 0
    store: str = "./taskgrouping-store"
    workers: int = 2
    dask_address: str | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    swola: SwolaSettings = field(default_factory=SwolaSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self) -> None:
        """Check what can be checked without the data."""
        check_method(self.method)
        get_selector(self.selector)
        if self.samples <= 0:
            raise InputError(f"--samples must be a positive integer, got {self.samples}")
        if self.groups is not None and self.groups < 1:
            raise InputError(f"--groups must be at least 1 or 'auto', got {self.groups}")
        if self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}")
        if self.device not in ("cpu", "cuda"):
            raise InputError(f"--device must be 'cpu' or 'cuda', got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the flow's parameters)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        swola = SwolaSettings(**d.pop("swola", {}))
        train = TrainSettings(**d.pop("train", {}))
        return cls(**d, swola=swola, train=train)
