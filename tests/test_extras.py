"""A feature whose optional packages are not installed (`make train` installs only the base) answers
with one line naming the extra that installs them."""

from __future__ import annotations

import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli, the same parser
    import tomli as tomllib
from pathlib import Path

import pytest

from classifier.errors import UserError
from classifier.extras import EXTRAS, import_for, refuse_overrides_needing_missing_extras

ROOT = Path(__file__).resolve().parents[1]


def _hide(monkeypatch, *modules: str) -> None:
    for name in modules:  # `import name` raises ModuleNotFoundError, as when it is not installed
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize(
    ("call", "hidden", "extra"),
    [
        ("classifier.evaluation.gradcam:_require_grad_cam", "pytorch_grad_cam", "gradcam"),
        ("classifier.data.streaming:_require_litdata", "litdata", "streaming"),
        ("classifier.foundation.clip:open_clip_module", "open_clip", "clip"),
    ],
)
def test_a_missing_extra_is_named_in_one_line(monkeypatch, call, hidden, extra):
    module_name, function = call.split(":")
    module = __import__(module_name, fromlist=[function])
    _hide(monkeypatch, hidden)
    with pytest.raises(UserError) as caught:
        getattr(module, function)()
    message = str(caught.value)
    assert "\n" not in message
    assert f'pip install -e ".[{extra}]"' in message
    assert f"pip install {EXTRAS[extra]}" in message


def test_export_to_onnx_without_the_export_extra_names_it(monkeypatch, tmp_path):
    import torch

    from classifier.tasks.export import _export_onnx

    _hide(monkeypatch, "onnx")
    with pytest.raises(UserError, match=r'format=onnx needs the export extra.*pip install -e "\.\[export\]"'):
        _export_onnx(torch.nn.Linear(3, 2), torch.zeros(1, 3), tmp_path / "model.onnx", None)
    assert not (tmp_path / "model.onnx").exists()


def test_a_broken_dependency_of_an_installed_extra_keeps_its_traceback(monkeypatch):
    # grad-cam is installed but cannot import OpenCV, which it needs: not a missing extra, no hint.
    for name in [name for name in sys.modules if name.startswith("pytorch_grad_cam")]:
        monkeypatch.delitem(sys.modules, name)
    _hide(monkeypatch, "cv2")
    with pytest.raises(ImportError) as caught:
        import_for("gradcam=true", "gradcam", "pytorch_grad_cam")
    assert caught.value.name == "cv2"


@pytest.mark.parametrize(
    ("argv", "hidden", "extra"),
    [
        (["train.py", "-m", "hparams_search=optuna"], "optuna", "sweeps"),
        (
            ["train.py", "-m", "hydra/launcher=joblib", "seed=1,2"],
            "hydra_plugins.hydra_joblib_launcher",
            "sweeps",
        ),
        (["train.py", "-m", "hydra/launcher=slurm"], "hydra_plugins.hydra_submitit_launcher", "sweeps"),
        (["train.py", "seed=1", "logger=mlflow"], "mlflow", "mlflow"),
        (["train.py", "seed=1", "logger=[tensorboard,wandb]"], "wandb", "wandb"),
    ],
)
def test_a_command_line_choice_needing_a_missing_extra_is_refused_in_one_line(
    monkeypatch, argv, hidden, extra
):
    _hide(monkeypatch, hidden)
    with pytest.raises(SystemExit) as caught:
        refuse_overrides_needing_missing_extras(argv)
    assert str(caught.value).startswith(f"[ERROR] {argv[2]} needs the {extra} extra")


def test_choices_whose_extra_is_installed_pass():
    refuse_overrides_needing_missing_extras(["train.py", "-m", "hparams_search=optuna", "seed=1,2"])
    refuse_overrides_needing_missing_extras(["train.py", "logger=[tensorboard,mlflow,wandb]"])


def test_every_extra_named_in_a_hint_is_declared_and_the_base_holds_none_of_them():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(EXTRAS) <= set(extras)
    base = " ".join(project["dependencies"]).lower()
    for extra in EXTRAS:
        for requirement in extras[extra]:
            assert requirement.split(">")[0].lower() not in base, (extra, requirement)
    # make test installs dev: the tests' tools and every feature extra
    assert extras["all"] == [f"classifier[{','.join(EXTRAS)}]"]
    assert extras["dev"] == ["classifier[test,all]"]
