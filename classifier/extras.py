"""Optional features and the extra that installs each (pyproject.toml's [project.optional-dependencies]).

`make train` installs only what the default run needs; a command that needs more says in one line
which extra to install, instead of an ImportError's traceback or Hydra's "could not find" text.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from classifier.errors import UserError

# extra -> the PyPI packages it installs (for the hint: pip install PACKAGES works outside the repository)
EXTRAS = {
    "export": "onnx onnxscript onnxruntime",
    "gradcam": "grad-cam",
    "sweeps": "optuna hydra-joblib-launcher hydra-submitit-launcher",
    "streaming": "litdata",
    "clip": "open_clip_torch",
    "mlflow": "mlflow",
    "wandb": "wandb",
}

# Command-line choices that need an extra before Hydra can even compose the config:
# (override key, value) -> (the module it needs, its extra).
_OVERRIDES_NEEDING_EXTRAS = {
    ("hparams_search", "optuna"): ("optuna", "sweeps"),
    ("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "sweeps"),
    ("hydra/launcher", "submitit_local"): ("hydra_plugins.hydra_submitit_launcher", "sweeps"),
    ("hydra/launcher", "submitit_slurm"): ("hydra_plugins.hydra_submitit_launcher", "sweeps"),
    ("hydra/launcher", "slurm"): ("hydra_plugins.hydra_submitit_launcher", "sweeps"),
    ("logger", "mlflow"): ("mlflow", "mlflow"),
    ("logger", "wandb"): ("wandb", "wandb"),
}


def _chosen_options(value: str) -> list[str]:
    """The options of a group override's value: `mlflow`, or each of a list `[tensorboard,mlflow]`."""
    if value.startswith("[") and value.endswith("]"):
        return [option.strip() for option in value[1:-1].split(",")]
    return [value]


def install_hint(extra: str) -> str:
    """How to install `extra`: from the repository (an editable install) or by its packages' names."""
    return f'pip install -e ".[{extra}]" in the repository (or pip install {EXTRAS[extra]})'


def missing_extra(feature: str, extra: str) -> UserError:
    """The one-line error for `feature` (what the user asked for, e.g. "format=onnx") without `extra`."""
    return UserError(f"{feature} needs the {extra} extra, which is not installed: {install_hint(extra)}")


def import_for(feature: str, extra: str, module: str) -> ModuleType:
    """`import module` for `feature`; a UserError naming the extra when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is None or not module.startswith(exc.name.split(".")[0]):
            raise  # the package is there but something it imports is broken: not a missing extra
        raise missing_extra(feature, extra) from exc


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def refuse_overrides_needing_missing_extras(argv: list[str] | None = None) -> None:
    """Exit with one line when a command-line choice (`hparams_search=optuna`, `logger=[tensorboard,mlflow]`)
    needs an extra that is not installed: Hydra would answer with a page about missing configs."""
    argv = sys.argv if argv is None else argv
    for arg in argv[1:]:
        key, sep, value = arg.lstrip("+").partition("=")
        for option in _chosen_options(value) if sep else []:
            needed = _OVERRIDES_NEEDING_EXTRAS.get((key, option))
            if needed and not _installed(needed[0]):
                sys.exit(f"[ERROR] {missing_extra(arg, needed[1])}")
