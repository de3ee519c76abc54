"""Every config group option composes; every data x model pair builds and runs a forward pass."""

from __future__ import annotations

import pytest
import torch
from conftest import CONF_DIR, compose_config, write_cifar_batches, write_image_folder
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate

from classifier.builders import build_datamodule, build_module, build_trainer, pretrained_input_overrides

DATA = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if p.stem != "timm")
TRAINERS = sorted(p.stem for p in (CONF_DIR / "trainer").glob("*.yaml"))
DEBUGS = sorted(p.stem for p in (CONF_DIR / "debug").glob("*.yaml"))


def data_overrides(name, tmp_path):
    """Overrides that point each data config at files generated in tmp_path."""
    if name in ("cifar10", "cifar100"):
        write_cifar_batches(tmp_path / "cifar", name, images_per_file=200)
        return [f"data.root={tmp_path / 'cifar'}"]
    root = write_image_folder(tmp_path / "images", {"train": 4, "val": 2}, size=40)
    if name == "csv":
        rows = [f"{p.relative_to(root)},{p.parent.name},{p.parts[-3]}" for p in sorted(root.rglob("*.*"))]
        (root / "all.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
        return [f"data.csv={root / 'all.csv'}"]
    return [f"data.root={root}"] if name == "imagefolder" else []


@pytest.mark.parametrize("data", DATA)
def test_every_model_runs_a_forward_pass_on_every_data(data, compose_train, tmp_path):
    overrides = [f"data={data}", "data.batch_size=2", "data.num_workers=0", *data_overrides(data, tmp_path)]
    datamodule = build_datamodule(compose_train(*overrides).data)
    images, labels = next(iter(datamodule.train_dataloader()))
    side = datamodule.input_spec.img_size
    assert images.shape == (2, 3, side, side)
    assert side == (32 if data in ("digits", "cifar10", "cifar100") else 40)  # generated at 40 px
    for model in MODELS:
        cfg = compose_train(*overrides, f"model={model}")
        module = build_module(cfg, datamodule).eval()
        with torch.no_grad():
            logits = module(images)
        assert logits.shape == (2, datamodule.num_classes), model
        assert torch.isfinite(logits).all(), model


def test_pretrained_model_takes_its_input_size_and_normalisation(compose_train):
    cfg = compose_train("model=vit_s", "model.pretrained=true")
    overrides = pretrained_input_overrides(cfg.data, cfg.model)
    assert overrides == {
        "img_size": 224,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
    }
    cfg = compose_train("model=resnet18", "model.pretrained=true", "data.img_size=64")
    assert pretrained_input_overrides(cfg.data, cfg.model)["img_size"] == 64  # data.img_size wins
    cfg = compose_train("model=resnet18")
    assert pretrained_input_overrides(cfg.data, cfg.model) == {}  # from scratch: the data's own


@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_configs_compose(trainer, compose_train, tmp_path):
    cfg = compose_config("train", tmp_path, [f"trainer={trainer}"], quiet=False)
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if trainer in ("gpu", "ddp"):  # no GPU here: composing is what can be checked
        assert cfg.trainer.accelerator == "gpu"
        return
    cfg = compose_train(f"trainer={trainer}", "trainer.accelerator=cpu")
    built = build_trainer(cfg, with_loggers=False)
    assert built.max_epochs == cfg.trainer.max_epochs
    if trainer == "ddp_cpu":
        assert built.num_devices == 2


@pytest.mark.parametrize("debug", DEBUGS)
def test_debug_configs_compose(debug, compose_train):
    cfg = compose_train(f"debug={debug}")
    assert cfg.trainer.accelerator == "cpu"
    instantiate(cfg.data)


def test_one_class_is_refused_in_one_line(compose_train, tmp_path):
    from classifier.errors import UserError

    root = write_image_folder(tmp_path / "one", {"train": 3}, classes=("cat",))
    cfg = compose_train("data=imagefolder", f"data.root={root}")
    with pytest.raises(UserError, match=r"the data has 1 class \(cat\); a classifier needs at least two"):
        build_module(cfg, build_datamodule(cfg.data))


def test_optimizer_and_scheduler_are_swappable(compose_train):
    cfg = compose_train("optimizer=sgd", "scheduler=none")
    assert cfg.optimizer._target_ == "torch.optim.SGD" and not cfg.get("scheduler")


def test_unknown_option_lists_the_valid_ones(compose_train):
    with pytest.raises(MissingConfigException, match=r"(?s)Could not find 'model/resnet19'.*resnet18.*vit_b"):
        compose_train("model=resnet19")
    with pytest.raises(ConfigCompositionException, match="Could not override 'data.bach_size'"):
        compose_train("data.bach_size=3")


def test_every_trainer_argument_is_settable_without_a_plus():
    import inspect

    import lightning as L
    from omegaconf import OmegaConf

    listed = set(OmegaConf.load(CONF_DIR / "trainer" / "default.yaml"))
    arguments = set(inspect.signature(L.Trainer.__init__).parameters) - {
        "self",
        "callbacks",
        "logger",
        "plugins",
    }
    assert arguments <= listed, f"add to conf/trainer/default.yaml: {sorted(arguments - listed)}"
