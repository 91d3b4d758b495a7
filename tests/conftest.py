import os
import tempfile
import textwrap

import numpy as np
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# a private Prefect server per CLI run: no shared server outlives a test (tests/flows/test_shared_server.py
# checks the shared one)
os.environ.setdefault("TASKGROUPING_SERVER_IDLE", "0")
# the cached empty Prefect database (flows/server.py) lives with this session, not in the user's cache
os.environ.setdefault("TASKGROUPING_CACHE_DIR", tempfile.mkdtemp(prefix="tg-cache-"))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


RESIDUAL_FACTORY = textwrap.dedent('''
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.bn(self.conv(x)))

    def make(shape):
        return nn.Sequential(nn.Conv2d(shape[0], 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                             Block(6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 12), nn.Tanh())

    def make_mlp(shape):
        return nn.Sequential(nn.Linear(shape[0], 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
''')


@pytest.fixture
def residual_factory(tmp_path):
    """A user's trunk file: ``make`` (conv, BatchNorm, a residual block, linear) and ``make_mlp``."""
    path = tmp_path / "user_trunks.py"
    path.write_text(RESIDUAL_FACTORY)
    return str(path)
