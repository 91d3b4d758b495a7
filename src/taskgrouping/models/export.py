"""Grouped models for use outside the tool: an export folder per group and a loader that predicts.

An exported group is a folder with ``model.safetensors`` (the trained state dict),
``model.json`` (the trunk spec, the feature columns and their scaling, the tasks
with their kinds, classes and target scaling) and a ``README.md``. Nothing is
pickled: the loader rebuilds the architecture from ``model.json`` and reads the
weights with safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from taskgrouping.data.dataset import TaskSpec
from taskgrouping.errors import InputError
from taskgrouping.models.train import MultiTaskModel

FORMAT = "taskgrouping-group-model"
FORMAT_VERSION = 1


class GroupPredictor(nn.Module):
    """A group's model on raw features: standardises, runs the shared trunk and every head.

    ``forward(x)`` takes ``(N, n_features)`` float32 in the column order of
    :attr:`features` and returns ``{task: prediction}``: binary tasks the probability
    of the positive class ``(N,)``, multi-class tasks class probabilities ``(N, C)``
    (columns in :attr:`classes` order), regression tasks values in the label's units ``(N,)``.
    """

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_scale: torch.Tensor

    def __init__(self, spec: dict[str, Any]) -> None:
        """Build the (untrained) module described by a ``model.json`` dict."""
        super().__init__()
        self.spec = spec
        self.features: list[str] = list(spec["features"])
        self.tasks = [TaskSpec(t["name"], t["kind"], int(t["n_classes"]), tuple(t["classes"]))
                      for t in spec["tasks"]]
        self.classes = {t.name: list(t.classes) for t in self.tasks}
        trunk = spec["trunk"]
        shape = tuple(trunk["input_shape"]) if trunk.get("input_shape") else None
        self.model = MultiTaskModel(int(trunk["in_dim"]), self.tasks, int(trunk["hidden"]), int(trunk["layers"]),
                                    seed=0, trunk=trunk.get("name", "mlp"), input_shape=shape)
        self.n_inputs = int(trunk["in_dim"])
        self.register_buffer("x_mean", torch.tensor(spec["x_mean"], dtype=torch.float32))
        self.register_buffer("x_std", torch.tensor(spec["x_std"], dtype=torch.float32))
        self.register_buffer("y_mean", torch.tensor([t["y_mean"] for t in spec["tasks"]], dtype=torch.float32))
        self.register_buffer("y_scale", torch.tensor([t["y_scale"] for t in spec["tasks"]], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions of every task of the group (see the class docstring)."""
        if x.ndim > 2:  # images or tensors: (N, *input_shape)
            x = x.reshape(x.shape[0], -1)
        if x.ndim != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(f"expected (N, {self.n_inputs}) inputs (features {', '.join(self.features[:5])}"
                             f"{' ...' if len(self.features) > 5 else ''}), got {tuple(x.shape)}")
        z = (x.to(self.x_mean.dtype) - self.x_mean) / self.x_std
        out: dict[str, torch.Tensor] = {}
        for j, (task, logits) in enumerate(zip(self.tasks, self.model(z), strict=True)):
            if task.kind == "binary":
                out[task.name] = torch.sigmoid(logits[:, 0])
            elif task.kind == "multiclass":
                out[task.name] = torch.softmax(logits, dim=1)
            else:
                out[task.name] = logits[:, 0] * self.y_scale[j] + self.y_mean[j]
        return out

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`forward` on a numpy array of raw features, without gradients; numpy out."""
        with torch.no_grad():
            dev = self.x_mean.device
            return {k: v.cpu().numpy() for k, v in self(torch.as_tensor(x, dtype=torch.float32, device=dev)).items()}


def load_group_model(folder: str | Path, device: str = "cpu") -> GroupPredictor:
    """Load an exported group (``taskgrouping export``) as a :class:`GroupPredictor` in eval mode.

    Example:
        >>> model = load_group_model("exported/group-0")       # doctest: +SKIP
        >>> probs = model(torch.as_tensor(features))["y_malignant"]  # doctest: +SKIP
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    spec_path = folder / "model.json"
    if not spec_path.is_file():
        raise InputError(f"{folder}: no model.json (not an exported group folder)")
    spec = json.loads(spec_path.read_text())
    if spec.get("format") != FORMAT or int(spec.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(f"{spec_path}: not a {FORMAT} version <= {FORMAT_VERSION}")
    module = GroupPredictor(spec)
    module.model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return module.to(device).eval()


def group_spec(meta: dict[str, Any], members: list[str], served: list[str], train: dict[str, Any],
               about: dict[str, Any]) -> dict[str, Any]:
    """The ``model.json`` of one group: trunk, feature scaling, and each member task's kind and scaling."""
    if meta.get("x_mean") is None:
        raise InputError(f"run {about.get('run_id')}: its prepared data predates exports (no feature scaling "
                         "kept); run it again with this version, then export")
    by_name = {t["name"]: (i, t) for i, t in enumerate(meta["tasks"])}
    tasks = []
    for m in members:
        i, t = by_name[m]
        tasks.append({"name": m, "kind": t["kind"], "n_classes": t["n_classes"], "classes": t["classes"],
                      "y_mean": float(meta["y_mean"][i]), "y_scale": float(meta["y_scale"][i]),
                      "served": m in served})
    shape = meta.get("input_shape")
    in_dim = len(meta["x_mean"])
    name = str(train.get("trunk", "auto"))
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "trunk": {"name": name, "input_shape": shape, "in_dim": in_dim,
                      "hidden": int(train["hidden"]), "layers": int(train["layers"])},
            "features": list(meta["feature_names"]), "x_mean": [float(v) for v in meta["x_mean"]],
            "x_std": [float(v) for v in meta["x_std"]], "tasks": tasks} | about


def group_readme(spec: dict[str, Any], index: int) -> str:
    """A README for one exported group."""
    served = [t["name"] for t in spec["tasks"] if t["served"]]
    helpers = [t["name"] for t in spec["tasks"] if not t["served"]]
    lines = [f"# Group {index} of run {spec.get('run_id')}", "",
             f"Trained by taskgrouping on `{spec.get('data')}` (method `{spec.get('method')}`, selector "
             f"`{spec.get('selector')}`). Serves: {', '.join(f'`{t}`' for t in served)}."
             + (f" Trained with the helpers {', '.join(f'`{t}`' for t in helpers)}, whose predictions are "
                "not what this group is for." if helpers else ""), "",
             "    from taskgrouping import load_group_model",
             "    model = load_group_model('THIS_FOLDER')",
             "    predictions = model(torch.as_tensor(x, dtype=torch.float32))  # {task: tensor}", "",
             f"`x` is `(N, {len(spec['features'])})` raw feature values in this column order: "
             + ", ".join(f"`{f}`" for f in spec["features"][:30]) + (" ..." if len(spec["features"]) > 30 else "")
             + ". The model standardises them itself.", "",
             "| task | kind | prediction |", "|---|---|---|"]
    what = {"binary": "probability of the positive class", "multiclass": "class probabilities",
            "regression": "value in the label's units"}
    for t in spec["tasks"]:
        extra = f" (classes {', '.join(map(str, t['classes']))})" if t["kind"] != "regression" else ""
        lines.append(f"| `{t['name']}` | {t['kind']} | {what[t['kind']]}{extra} |")
    trunk = spec["trunk"]
    lines += ["", f"Trunk `{trunk['name']}` (hidden {trunk['hidden']}, layers {trunk['layers']}, input shape "
              f"{trunk.get('input_shape') or [trunk['in_dim']]}), one linear head per task (`model.json`); weights in "
              "`model.safetensors`. A factory trunk (`PATH.py:FUNCTION`) must be importable where the model is loaded."]
    return "\n".join(lines) + "\n"
