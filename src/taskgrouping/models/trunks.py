"""Trunks for any input: the project's own ``mlp``, ``cnn`` and ``resnet``, or a user's factory, plus checkpoints.

A trunk maps a float32 batch ``(N, *input_shape)`` to features ``(N, F)``. Every probe
and every trained model of a run uses the same trunk, built from a name:

* ``auto``: ``mlp`` for vector inputs, ``cnn`` for images and other tensors;
* ``mlp``: the ReLU MLP of :mod:`taskgrouping.models.trunk` (SWOLA keeps its exact
  factorised probe for it);
* ``cnn``: three conv-BN-ReLU stages (8, 16, 32 channels, strides 1, 2, 2), global
  average pooling, a linear layer to ``hidden`` features;
* ``resnet``: a small residual network (stem 8 channels, basic blocks 8, 16 (stride 2),
  32 (stride 2)), global average pooling, a linear layer to ``hidden``;
* ``PATH.py:FUNCTION`` or ``package.module:FUNCTION``: ``FUNCTION(input_shape)`` returns
  an ``nn.Module``.

A checkpoint (``.safetensors``, or a torch file read with ``weights_only=True``; never
unpickled) replaces the seeded initial weights: it is theta0 of every probe and the
initialisation of every trained model. :func:`trunk_fingerprint` hashes the factory's
source file and the checkpoint's bytes, so cache keys change when either does.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taskgrouping.errors import InputError
from taskgrouping.hashing import derive_seed, stable_hash
from taskgrouping.models.trunk import build_trunk

BUILTIN_TRUNKS = ("auto", "mlp", "cnn", "resnet")


def resolve_trunk_name(name: str, input_shape: tuple[int, ...]) -> str:
    """``auto`` -> ``mlp`` for vectors, ``cnn`` for anything with more than one dimension."""
    if name == "auto":
        return "mlp" if len(input_shape) == 1 else "cnn"
    return name


def is_factory(name: str) -> bool:
    """Whether a trunk name is a user factory (``PATH.py:FUNCTION`` or ``module:FUNCTION``)."""
    return name not in BUILTIN_TRUNKS


def _check_name(name: str) -> None:
    if not is_factory(name):
        return
    target, sep, func = name.rpartition(":")
    if not sep or not target or not func.isidentifier():
        raise InputError(f"--trunk {name!r}: use mlp, cnn, resnet, PATH.py:FUNCTION or package.module:FUNCTION")


def load_factory(name: str) -> Callable[[tuple[int, ...]], nn.Module]:
    """The factory function ``name`` names; every way it can be missing is an :class:`InputError`."""
    _check_name(name)
    target, _, func = name.rpartition(":")
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise InputError(f"--trunk {name!r}: no such file {path}")
        module_name = "taskgrouping_trunk_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise InputError(f"--trunk {name!r}: {path} cannot be imported")
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                raise InputError(f"--trunk {name!r}: importing {path} failed: {type(exc).__name__}: {exc}") from None
            sys.modules[module_name] = module
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise InputError(f"--trunk {name!r}: cannot import {target}: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, func, None)
    if fn is None or not callable(fn):
        raise InputError(f"--trunk {name!r}: {target} has no function {func!r}")
    return fn  # type: ignore[no-any-return]


def _factory_source(name: str) -> bytes:
    """The bytes of the file that defines a factory (its module's source)."""
    target, _, _ = name.rpartition(":")
    if target.endswith(".py"):
        return Path(target).expanduser().resolve().read_bytes()
    module = importlib.import_module(target)
    own = getattr(module, "__tg_source__", None)  # a callable given to the Python API
    if isinstance(own, bytes):
        return own
    try:
        return Path(inspect.getfile(module)).read_bytes()
    except (TypeError, OSError):
        return target.encode()


def trunk_fingerprint(name: str, checkpoint: str | None) -> str:
    """Content hash of what a trunk is made of: a factory's source file and the checkpoint's bytes."""
    parts: list[Any] = [name]
    if is_factory(name):
        load_factory(name)  # fails naming the problem before any hashing
        parts.append(_factory_source(name))
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise InputError(f"--checkpoint {checkpoint}: no such file")
        parts.append(path.read_bytes())
    return stable_hash("trunk", *parts)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU x 3 (8, 16, 32 channels; strides 1, 2, 2), global average pooling, linear to ``hidden``."""

    def __init__(self, in_channels: int, hidden: int) -> None:
        """Build the layers (initialised by the caller's seeded RNG)."""
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for width, stride in ((8, 1), (16, 2), (32, 2)):
            layers += [nn.Conv2d(c, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU()]
            c = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out = nn.Sequential(nn.Linear(c, hidden), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, hidden)."""
        return self.out(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        """Build the block."""
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut x)."""
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small ResNet: stem (8 channels), basic blocks 8, 16 (stride 2), 32 (stride 2), pooling, linear."""

    def __init__(self, in_channels: int, hidden: int) -> None:
        """Build the layers (initialised by the caller's seeded RNG)."""
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2), BasicBlock(16, 32, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, hidden), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, hidden)."""
        return self.head(self.blocks(self.stem(x)))


class ShapedTrunk(nn.Module):
    """Wraps a trunk so that it takes flat rows ``(N, prod(input_shape))`` (how prepared data is kept)."""

    def __init__(self, body: nn.Module, input_shape: tuple[int, ...]) -> None:
        """``body`` maps ``(N, *input_shape)`` to ``(N, F)``."""
        super().__init__()
        self.body = body
        self.input_shape = tuple(input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, F)."""
        return self.body(x.reshape(x.shape[0], *self.input_shape))


def _builtin_body(name: str, input_shape: tuple[int, ...], hidden: int, layers: int) -> nn.Module:
    if name == "mlp":
        d = 1
        for s in input_shape:
            d *= s
        return nn.Sequential(nn.Flatten(), build_trunk(d, hidden, layers, 0))
    if len(input_shape) != 3:
        raise InputError(f"--trunk {name} needs image inputs (C, H, W); these inputs have shape {input_shape}")
    cls = SmallCNN if name == "cnn" else SmallResNet
    return cls(input_shape[0], hidden)


def load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``: nothing is unpickled)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"--checkpoint {path}: no such file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--checkpoint {path}: does not load as a state dict ({first[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"--checkpoint {path}: not a state dict of tensors")
    return state


def build_any_trunk(name: str, input_shape: tuple[int, ...], hidden: int, layers: int, seed: int,
                    checkpoint: str | None = None) -> ShapedTrunk:
    """The trunk ``name`` for inputs of ``input_shape``, seeded (and loaded from ``checkpoint``).

    The same arguments give bitwise-identical weights in every process: the factory
    runs under a forked RNG seeded from ``seed``, so the caller's RNG is untouched.
    Raises :class:`InputError` naming the problem (missing factory, a factory that
    raises or returns no module, a checkpoint that does not fit).
    """
    name = resolve_trunk_name(name, input_shape)
    with torch.random.fork_rng(devices=[]):
        # seeded by the factory's function name, not its path: a moved file gives the same weights
        torch.manual_seed(derive_seed(seed, "any-trunk", name.rpartition(":")[2] if is_factory(name) else name,
                                      list(input_shape), hidden, layers))
        if is_factory(name):
            fn = load_factory(name)
            try:
                body = fn(tuple(input_shape))
            except Exception as exc:
                raise InputError(f"--trunk {name!r}: the factory raised {type(exc).__name__}: {exc}") from None
            if not isinstance(body, nn.Module):
                raise InputError(f"--trunk {name!r}: the factory returned {type(body).__name__}, not a torch.nn.Module")
        else:
            body = _builtin_body(name, input_shape, hidden, layers)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        own = body.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            what = f"missing key {missing[0]!r}" if missing else f"unexpected key {unexpected[0]!r}"
            raise InputError(f"--checkpoint {checkpoint}: does not match the trunk {name}: {what} "
                             f"({len(missing)} missing, {len(unexpected)} unexpected)")
        wrong = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
        if wrong:
            raise InputError(f"--checkpoint {checkpoint}: key {wrong[0]!r} has shape {tuple(state[wrong[0]].shape)}, "
                             f"the trunk's is {tuple(own[wrong[0]].shape)}")
        body.load_state_dict(state)
    return ShapedTrunk(body.float(), tuple(input_shape))


def feature_width(trunk: nn.Module, input_shape: tuple[int, ...], name: str) -> int:
    """F, from a dry forward pass of two zero inputs; a module whose output is not ``(N, F)`` is refused."""
    d = 1
    for s in input_shape:
        d *= s
    was = trunk.training
    trunk.eval()
    try:
        with torch.no_grad():
            out = trunk(torch.zeros(2, d))
    except Exception as exc:
        raise InputError(f"--trunk {name!r}: a forward pass on inputs of shape {tuple(input_shape)} failed: "
                         f"{type(exc).__name__}: {str(exc)[:200]}") from None
    finally:
        trunk.train(was)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"--trunk {name!r}: the module must map (N, *input_shape) to (N, F); for N = 2 it "
                         f"returned {shape}")
    return int(out.shape[1])


def calibrate_batchnorm(trunk: nn.Module, x: torch.Tensor, chunk: int = 256) -> None:
    """Set BatchNorm running statistics to the exact mean and variance over ``x`` (no gradients).

    A fresh trunk has statistics (0, 1); probes run the trunk in ``eval()`` (sample
    gradients must not depend on the batch), so its statistics are first set from the
    probe inputs: one pass in train mode with a cumulative average. Other modules'
    behaviour in train mode (dropout) is irrelevant: nothing else is kept.
    """
    norms = [m for m in trunk.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: equal weight for every chunk
    trunk.train()
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            trunk(x[start : start + chunk])
    for m, momentum in saved:
        m.momentum = momentum
    trunk.eval()
