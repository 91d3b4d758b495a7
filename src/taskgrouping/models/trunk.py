"""The shared trunk: an MLP whose linear layers are the parameters SWOLA probes and groups share."""

from __future__ import annotations

import torch
from torch import nn

from taskgrouping.hashing import derive_seed


def build_trunk(in_dim: int, hidden: int, layers: int, seed: int) -> nn.Sequential:
    """A ReLU MLP ``in_dim -> hidden (-> hidden)*`` with ``layers`` linear layers, seeded.

    The same arguments give bitwise-identical weights in every process (initialised
    on the CPU under a forked RNG, so global RNG state is untouched).
    """
    if layers < 1 or hidden < 1:
        raise ValueError(f"trunk needs layers >= 1 and hidden >= 1, got {layers}, {hidden}")
    mods: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "trunk", in_dim, hidden, layers))
        d = in_dim
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
    return nn.Sequential(*mods)


def trunk_linears(trunk: nn.Sequential) -> list[nn.Linear]:
    """The trunk's linear layers, input to output."""
    return [m for m in trunk if isinstance(m, nn.Linear)]


def resolve_device(device: str) -> torch.device:
    """``cpu`` or ``cuda``; asking for CUDA where there is none is an error, not a silent fallback."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was given but torch sees no CUDA device on this worker")
    return torch.device(device)
