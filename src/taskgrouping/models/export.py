"""Grouped models for use outside the tool: an export folder per group and a loader that predicts.

An exported model is a folder with ``model.safetensors`` (the trained state dict),
``model.json`` (the setting it belongs to, the trunk spec, the feature columns and
their scaling and fill values, the tasks with their kinds, classes and target
scaling), a ``README.md`` and, when the trunk is a file factory (``PATH.py:FUNCTION``),
that file as ``trunk.py``, so the folder loads anywhere. Nothing is pickled: the
loader rebuilds the architecture from ``model.json`` and reads the weights with
safetensors.
"""

from __future__ import annotations

import json
import re
import shutil
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

EXPORT_SETTINGS = ("grouped", "all_together", "single_task")
"""The settings ``taskgrouping export --setting`` writes (``recommended`` picks one of them)."""

TRUNK_FILE = "trunk.py"
"""A file factory trunk's source, copied into every exported folder."""


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
        fill = spec.get("imputed") or {}
        self.x_fill: torch.Tensor | None = None
        if fill:  # NaN where a column was not imputed: a missing value there stays an error of the caller's
            self.x_fill = torch.tensor([float(fill.get(f, np.nan)) for f in self.features], dtype=torch.float32)
        self.setting: str = str(spec.get("setting", "grouped"))
        self.columns: list[str] = list(spec.get("columns") or _source_columns(self.features))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions of every task of the group (see the class docstring)."""
        if x.ndim > 2:  # images or tensors: (N, *input_shape)
            x = x.reshape(x.shape[0], -1)
        if x.ndim != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(f"expected (N, {self.n_inputs}) inputs (features {', '.join(self.features[:5])}"
                             f"{' ...' if len(self.features) > 5 else ''}), got {tuple(x.shape)}")
        x = x.to(self.x_mean.dtype)
        if self.x_fill is not None:
            x = torch.where(torch.isnan(x), self.x_fill.to(x.device), x)
        z = (x - self.x_mean) / self.x_std
        out: dict[str, torch.Tensor] = {}
        for j, (task, logits) in enumerate(zip(self.tasks, self.model(z), strict=True)):
            if task.kind == "binary":
                out[task.name] = torch.sigmoid(logits[:, 0])
            elif task.kind == "multiclass":
                out[task.name] = torch.softmax(logits, dim=1)
            else:
                out[task.name] = logits[:, 0] * self.y_scale[j] + self.y_mean[j]
        return out

    def predict(self, x: Any) -> dict[str, np.ndarray]:
        """:meth:`forward` on raw features without gradients; numpy out.

        ``x``: a numpy array in the column order of :attr:`features`, or a polars or pandas
        DataFrame (or a pyarrow Table) holding the feature columns by name, in any order
        (other columns are ignored).
        """
        from taskgrouping.data.load import is_table

        arr = self.frame_features(x) if is_table(x) else np.array(x, dtype=np.float32, order="C")  # writable, C order
        with torch.no_grad():
            dev = self.x_mean.device
            return {k: v.cpu().numpy() for k, v in self(torch.from_numpy(arr).to(dev)).items()}

    def frame_features(self, frame: Any) -> np.ndarray:
        """The feature matrix ``(N, n_features)`` float32 of a frame's columns, picked by name."""
        import polars as pl

        if not isinstance(frame, pl.DataFrame):
            frame = pl.from_pandas(frame) if type(frame).__module__.startswith("pandas") else pl.from_arrow(frame)
        assert isinstance(frame, pl.DataFrame)
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise ValueError(f"the frame lacks the feature column{'s' if len(missing) > 1 else ''} "
                             + ", ".join(repr(c) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
                             + f" (this model takes {len(self.columns)}: {', '.join(self.columns[:8])}"
                             + (" ..." if len(self.columns) > 8 else "") + ")")
        blocks = []
        fill = self.spec.get("imputed") or {}
        for c in self.columns:
            s = frame[c]
            if isinstance(s.dtype, pl.List | pl.Array):
                blocks.append(np.asarray(s.to_list(), dtype=np.float32).reshape(frame.height, -1))
                continue
            if not s.dtype.is_numeric() and s.dtype != pl.Boolean:
                raise ValueError(f"feature column {c!r} has dtype {s.dtype}; it must be numeric")
            col = s.cast(pl.Float64).to_numpy().astype(np.float32)
            if np.isnan(col).any() and c not in fill:
                why = ("the model has no fill value for it (it had no missing values in training)" if fill else
                       "and the model was not trained with --impute")
                raise ValueError(f"feature column {c!r} has {int(np.isnan(col).sum())} missing values, {why}")
            blocks.append(col.reshape(-1, 1))
        return np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)


def _source_columns(features: list[str]) -> list[str]:
    """The table columns features came from: ``c[0]``, ``c[1]``, ... are one list column ``c``."""
    out: list[str] = []
    for f in features:
        m = re.fullmatch(r"(.*)\[\d+\]", f)
        c = m.group(1) if m else f
        if not out or out[-1] != c:
            out.append(c)
    return out


def load_group_model(folder: str | Path, device: str = "cpu") -> GroupPredictor:
    """Load an exported model folder (``taskgrouping export``) as a :class:`GroupPredictor` in eval mode.

    A file factory trunk is loaded from the folder's own ``trunk.py``, so the folder can
    be moved or copied to another machine.

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
    target, sep, func = str(spec["trunk"].get("name", "")).rpartition(":")
    if sep and target.endswith(".py") and not Path(target).is_absolute():  # the folder's own copy
        spec = spec | {"trunk": spec["trunk"] | {"name": f"{(folder / target).resolve()}:{func}"}}
    module = GroupPredictor(spec)
    state = load_file(str(folder / "model.safetensors"))
    if any(k.startswith("trunk.body.") for k in state) and not any(k.startswith("trunk.body.") for k in
                                                                   module.model.state_dict()):
        # trained from a checkpoint: the built-in trunk was built wrapped (as a checkpoint's trunk is), not plain
        from taskgrouping.models.trunks import build_any_trunk

        trunk = spec["trunk"]
        shape = tuple(trunk["input_shape"]) if trunk.get("input_shape") else (int(trunk["in_dim"]),)
        module.model.trunk = build_any_trunk(str(trunk.get("name", "mlp")), shape, int(trunk["hidden"]),
                                             int(trunk["layers"]), seed=0)
    module.model.load_state_dict(state)
    return module.to(device).eval()


def export_plan(summary: dict[str, Any], setting: str) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """The setting to export (``recommended`` resolved) and its ``(folder name, model entry)`` list.

    An entry has the model's store ``folder`` and the tasks it ``serves``.
    """
    chosen = setting
    if setting == "recommended":
        chosen = summary.get("recommended") or (summary.get("verdict") or {}).get("setting") or "grouped"
    if chosen not in EXPORT_SETTINGS:  # a control is never recommended; an old summary may say anything
        chosen = "grouped"
    by_setting = dict(summary.get("setting_models") or {})
    if "grouped" not in by_setting:  # a run from before settings were recorded: its grouped models
        by_setting["grouped"] = [{"folder": f, "serves": [t for t in summary["groups"][int(gi)]
                                                          if summary["served"][t] == int(gi)]}
                                 for gi, f in sorted(summary["models"].items(), key=lambda kv: int(kv[0]))]
    entries = by_setting.get(chosen)
    if not entries:
        trained = ", ".join(s for s in EXPORT_SETTINGS if by_setting.get(s)) or "none"
        raise InputError(f"--setting {chosen}: run {summary['run_id']} did not train it (--evaluate "
                         f"{(summary.get('settings') or {}).get('evaluate')}; it trained: {trained}); run it again "
                         "with --evaluate all")
    if chosen == "grouped":
        names = [f"group-{summary['served'][e['serves'][0]]}" for e in entries]
    elif chosen == "all_together":
        names = ["all-together"]
    else:
        names = []
        for e in entries:
            base = "task-" + re.sub(r"[^A-Za-z0-9._-]+", "_", e["serves"][0])
            names.append(base if base not in names else f"{base}-{len(names)}")
    return chosen, list(zip(names, entries, strict=True))


def write_export_folder(target: Path, summary: dict[str, Any], meta: dict[str, Any], setting: str,
                        members: list[str], serves: list[str], name: str) -> dict[str, Any]:
    """``model.json``, ``README.md`` and (for a file factory trunk) ``trunk.py`` of one exported model."""
    from safetensors import safe_open

    from taskgrouping.models.trunks import resolve_trunk_name

    about = {"run_id": summary["run_id"], "data": summary.get("data"), "method": summary.get("method"),
             "selector": summary.get("selector"), "setting": setting, "recommended": summary.get("recommended")}
    train = dict(summary["settings"]["train"])
    settings = summary.get("settings") or {}
    shape = tuple(meta.get("input_shape") or (len(meta["x_mean"]),))
    trunk = resolve_trunk_name(str(train.get("trunk", "auto")), shape)  # what was built: "auto" names nothing
    train["trunk"] = trunk
    factory, sep, func = trunk.rpartition(":")
    if sep and factory.endswith(".py"):
        source = Path(factory)
        if not source.is_file():
            raise InputError(f"the run's trunk factory {source} is gone; the export needs its source (put the file "
                             "back where the run read it)")
        shutil.copyfile(source, target / TRUNK_FILE)
        train["trunk"] = f"{TRUNK_FILE}:{func}"
        about["trunk_source"] = str(source)
    if settings.get("checkpoint"):
        about["checkpoint"] = settings["checkpoint"]  # where training started; the weights hold the result
    with safe_open(str(target / "model.safetensors"), framework="pt") as f:
        about["parameters"] = int(sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys()
                                      if not k.rsplit(".", 1)[-1].startswith(("running_", "num_batches"))))
    spec = group_spec(meta, members, serves, train, about)
    (target / "model.json").write_text(json.dumps(spec, indent=2))
    (target / "README.md").write_text(group_readme(spec, name))
    return spec


def group_spec(meta: dict[str, Any], members: list[str], served: list[str], train: dict[str, Any],
               about: dict[str, Any]) -> dict[str, Any]:
    """The ``model.json`` of one model: trunk, feature scaling and fill values, each member task's kind and scaling."""
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
            "features": list(meta["feature_names"]), "columns": _source_columns(list(meta["feature_names"])),
            "x_mean": [float(v) for v in meta["x_mean"]], "x_std": [float(v) for v in meta["x_std"]],
            "imputed": dict(meta.get("imputed") or {}), "tasks": tasks} | about


def group_readme(spec: dict[str, Any], name: str | int) -> str:
    """A README for one exported model folder."""
    served = [t["name"] for t in spec["tasks"] if t["served"]]
    helpers = [t["name"] for t in spec["tasks"] if not t["served"]]
    setting = spec.get("setting", "grouped")
    title = {"grouped": f"Group model `{name}`", "all_together": "One model for all tasks",
             "single_task": f"Single-task model `{name}`"}.get(setting, f"Model `{name}`")
    recommended = spec.get("recommended")
    lines = [f"# {title} of run {spec.get('run_id')}", "",
             f"Trained by taskgrouping on `{spec.get('data')}` (method `{spec.get('method')}`, selector "
             f"`{spec.get('selector')}`), setting `{setting}`"
             + (" (the run's recommendation)" if recommended == setting else
                f" (the run recommended `{recommended}`)" if recommended else "")
             + f". Serves: {', '.join(f'`{t}`' for t in served)}."
             + (f" Trained with the helpers {', '.join(f'`{t}`' for t in helpers)}, whose predictions are "
                "not what this model is for." if helpers else ""), "",
             "    from taskgrouping import load_group_model",
             "    model = load_group_model('THIS_FOLDER')",
             "    predictions = model.predict(frame)  # a polars/pandas frame with the feature columns, or an array",
             "    predictions = model(torch.as_tensor(x, dtype=torch.float32))  # {task: tensor}", "",
             f"`x` is `(N, {len(spec['features'])})` raw feature values in this column order: "
             + ", ".join(f"`{f}`" for f in spec["features"][:30]) + (" ..." if len(spec["features"]) > 30 else "")
             + ". A frame's columns are picked by name. The model standardises them itself.", ""]
    if spec.get("imputed"):
        lines += ["Missing values (NaN) of " + ", ".join(f"`{c}` (filled with {v:.6g})" for c, v in
                                                          spec["imputed"].items())
                  + " are filled as in training.", ""]
    lines += ["| task | kind | prediction |", "|---|---|---|"]
    what = {"binary": "probability of the positive class", "multiclass": "class probabilities",
            "regression": "value in the label's units"}
    for t in spec["tasks"]:
        extra = f" (classes {', '.join(map(str, t['classes']))})" if t["kind"] != "regression" else ""
        lines.append(f"| `{t['name']}` | {t['kind']} | {what[t['kind']]}{extra} |")
    trunk = spec["trunk"]
    params = f", {spec['parameters']:,} parameters" if spec.get("parameters") else ""
    lines += ["", f"Trunk `{trunk['name']}` (hidden {trunk['hidden']}, layers {trunk['layers']}, input shape "
              f"{trunk.get('input_shape') or [trunk['in_dim']]}{params}), one linear head per task (`model.json`); "
              "weights in `model.safetensors`."]
    if spec.get("trunk_source"):
        lines.append(f"The trunk factory's source (`{spec['trunk_source']}`) is copied here as `{TRUNK_FILE}` and "
                     "loaded from this folder; a module it imports must be importable where the model is loaded.")
    elif ":" in str(trunk["name"]):
        lines.append(f"The trunk factory `{trunk['name']}` must be importable where the model is loaded.")
    if spec.get("checkpoint"):
        lines.append(f"Training started from the checkpoint `{spec['checkpoint']}`; these weights do not need it.")
    return "\n".join(lines) + "\n"
