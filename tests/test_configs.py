"""Every config group option builds what it describes: data modules feeding the model, backbones,
Trainers (strategy, devices, precision), optimizers and schedules; each debug option run for real;
and the one-line answers to config mistakes."""

from __future__ import annotations

import json
from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch
from conftest import (
    CONF_DIR,
    RECORD,
    compose_config,
    hydra_job_logging,
    write_cifar_batches,
    write_image_folder,
)
from hydra.errors import ConfigCompositionException, MissingConfigException
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from PIL import Image

from classifier.engine.build import (
    build_datamodule,
    build_module,
    build_net,
    build_trainer,
    pretrained_input_overrides,
)
from classifier.errors import UserError
from classifier.tasks.train import train

DATA = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
# dinov2_b and clip_b16 differ from dinov2_s and clip_b32 only in size: a forward pass of each of those
# (seconds to build a ViT-B) would test nothing more
MODELS = sorted(
    p.stem for p in (CONF_DIR / "model").glob("*.yaml") if p.stem not in ("timm", "dinov2_b", "clip_b16")
)
# a second or more each: the slow tier
LARGE_MODELS = {"convnext_t", "resnet50", "vit_b", "vit_s", "dinov2_s", "clip_b32"}
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
    if name == "litdata":
        from classifier.data.streaming import convert_image_folder

        convert_image_folder(root, str(tmp_path / "chunks"))
        return [f"data.root={tmp_path / 'chunks'}"]
    return [f"data.root={root}"] if name == "imagefolder" else []


@pytest.mark.parametrize("data", DATA)
def test_every_data_config_feeds_the_model(data, compose_train, tmp_path):
    overrides = [f"data={data}", "data.batch_size=2", "data.num_workers=0", *data_overrides(data, tmp_path)]
    cfg = compose_train(*overrides)
    datamodule = build_datamodule(cfg.data)
    images, labels = next(iter(datamodule.train_dataloader()))
    side = datamodule.input_spec.img_size
    assert images.shape == (2, 3, side, side)
    assert side == (32 if data in ("digits", "cifar10", "cifar100") else 40)  # generated at 40 px
    assert datamodule.num_classes == {"digits": 10, "cifar10": 10, "cifar100": 100}.get(data, 3)
    module = build_module(cfg, datamodule).eval()
    with torch.no_grad():
        logits = module(images)
    assert logits.shape == (2, datamodule.num_classes) and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "model", [pytest.param(m, marks=pytest.mark.slow) if m in LARGE_MODELS else m for m in MODELS]
)
def test_every_model_config_runs_a_forward_pass(model, compose_train):
    # 32 px (digits, CIFAR) and 40 px, which is no multiple of a ViT's 16 px patches
    cfg = compose_train(f"model={model}", "++model.pretrained=false")  # DINOv2 and CLIP: offline
    for side, num_classes in ((32, 10), (40, 3)):
        net = build_net(cfg.model, num_classes, side).eval()
        with torch.no_grad():
            logits = net(torch.randn(2, 3, side, side))
        assert logits.shape == (2, num_classes) and torch.isfinite(logits).all(), side


def test_pretrained_model_takes_timms_resolved_input_settings(compose_train):
    cfg = compose_train("model=vit_s", "model.pretrained=true")
    # timm's own resolution for these weights, crop included (vit_s: 0.9, resnet18: 0.95)
    assert pretrained_input_overrides(cfg.data, cfg.model) == {
        "img_size": 224,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
        "crop_pct": 0.9,
        "crop_mode": "center",
    }
    cfg = compose_train("model=resnet18", "model.pretrained=true", "data=imagefolder", "data.root=x")
    assert pretrained_input_overrides(cfg.data, cfg.model)["crop_pct"] == 0.95
    cfg = compose_train("model=resnet18", "model.pretrained=true", "data.img_size=96", "data.crop_pct=1.0")
    overrides = pretrained_input_overrides(cfg.data, cfg.model)
    assert overrides["img_size"] == 96 and "crop_pct" not in overrides  # the data's explicit keys win
    cfg = compose_train("model=resnet18", "model.pretrained=true", "data.img_size=32")
    assert "crop_pct" not in pretrained_input_overrides(cfg.data, cfg.model)  # small images: no crop
    cfg = compose_train("model=resnet18")
    assert pretrained_input_overrides(cfg.data, cfg.model) == {}  # from scratch: the data's own


def test_a_bad_weight_tag_is_one_line_listing_the_valid_tags(compose_train):
    cfg = compose_train("model=timm", "model.name=resnet18.foo", "model.pretrained=true")
    with pytest.raises(UserError) as info:
        pretrained_input_overrides(cfg.data, cfg.model)
    message = str(info.value)
    assert "\n" not in message and "resnet18 has no weights tagged 'foo'" in message
    assert "a1_in1k" in message and "tv_in1k" in message


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
def test_the_eval_transform_crops_as_timms_does(crop_mode):
    """Our tensor pipeline against timm's own PIL eval transform, on a non-square photo: the same
    scale and crop for each of timm's crop modes (resampling differs slightly: PIL vs torch)."""
    from timm.data import create_transform

    from classifier.data.transforms import InputSpec, create_eval_transform

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 300)[None, :, None] * np.ones((200, 1, 3))  # a horizontal gradient
    photo = Image.fromarray(np.clip(ramp + rng.normal(0, 3, ramp.shape), 0, 255).astype(np.uint8))
    spec = InputSpec(img_size=64, crop_pct=0.8, crop_mode=crop_mode, interpolation="bicubic")
    ours = create_eval_transform(spec)(photo)
    theirs = create_transform(
        (3, 64, 64), crop_pct=0.8, crop_mode=crop_mode, interpolation="bicubic", mean=spec.mean, std=spec.std
    )(photo)
    assert ours.shape == theirs.shape == (3, 64, 64)
    assert (ours - theirs).abs().mean() < 0.05, (ours - theirs).abs().mean()


# What each trainer config builds. GPUs are simulated (Lightning is told there are two), so the
# GPU configs are checked on any machine, and `auto` picks the CPU everywhere.
TRAINER_OBJECTS = {
    "default": (CPUAccelerator, SingleDeviceStrategy, 1, Precision, "32-true"),
    "cpu": (CPUAccelerator, SingleDeviceStrategy, 1, Precision, "32-true"),
    "debug": (CPUAccelerator, SingleDeviceStrategy, 1, Precision, "32-true"),
    "ddp_cpu": (CPUAccelerator, DDPStrategy, 2, Precision, "32-true"),
    "gpu": (CUDAAccelerator, SingleDeviceStrategy, 1, MixedPrecision, "bf16-mixed"),
    "ddp": (CUDAAccelerator, DDPStrategy, 2, MixedPrecision, "bf16-mixed"),
    "slurm": (CUDAAccelerator, DDPStrategy, 2, MixedPrecision, "bf16-mixed"),
}
GPU_TRAINERS = {"gpu", "ddp", "slurm"}
# trainer=slurm takes its devices and nodes from hydra/launcher=slurm
TRAINER_OVERRIDES = {"slurm": ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=2"]}


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_trainer_config_builds_its_trainer(trainer, tmp_path, monkeypatch):
    cfg = compose_config(
        "train", tmp_path, [f"trainer={trainer}", *TRAINER_OVERRIDES.get(trainer, [])], quiet=False
    )
    if trainer in GPU_TRAINERS and not torch.cuda.is_available():
        with pytest.raises(UserError) as error:  # as typed on this machine
            build_trainer(cfg, with_loggers=False)
        assert str(error.value).startswith("trainer.accelerator=gpu but torch finds no GPU on this machine")
        assert "use trainer=cpu" in str(error.value) and "\n" not in str(error.value)
    gpus = 2 if trainer in GPU_TRAINERS else 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr("lightning.fabric.accelerators.cuda.num_cuda_devices", lambda: gpus)
    monkeypatch.setattr("lightning.pytorch.accelerators.cuda.num_cuda_devices", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # an Ampere or newer GPU
    monkeypatch.setattr("classifier.engine.precision.cpu_computes_bf16", lambda: False)  # test_recipes: with
    # Trainer(benchmark=...) sets this global
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    built = build_trainer(cfg, with_loggers=False)
    accelerator, strategy, devices, precision, precision_name = TRAINER_OBJECTS[trainer]
    assert type(built.accelerator) is accelerator
    assert type(built.strategy) is strategy
    assert built.num_devices == devices
    assert type(built.precision_plugin) is precision and built.precision == precision_name
    if trainer in ("ddp", "slurm"):
        assert isinstance(built.strategy._layer_sync, TorchSyncBatchNorm)  # sync_batchnorm
    if trainer in GPU_TRAINERS:
        assert torch.backends.cudnn.benchmark is True
    if trainer == "debug":
        limits = (built.limit_train_batches, built.limit_val_batches, built.limit_test_batches)
        assert (built.max_epochs, limits, built.num_sanity_val_steps) == (1, (5, 3, 3), 0)
    else:
        assert built.max_epochs == 10 and built.limit_train_batches == 1.0


def test_sync_batchnorm_on_the_cpu_is_one_line_before_any_process_starts(tmp_path):
    # trainer=slurm on a cluster without GPUs, as docs/cluster.md shows it, less the last override
    cfg = compose_config(
        "train",
        tmp_path,
        ["trainer=slurm", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0"]
        + ["hydra.launcher.tasks_per_node=2", "trainer.accelerator=cpu"],
        quiet=False,
    )
    assert cfg.trainer.devices == 2  # one process per SLURM task
    with pytest.raises(UserError) as error:
        build_trainer(cfg, with_loggers=False)
    assert str(error.value) == (
        "trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm runs on CUDA only):"
        " with trainer.accelerator=cpu set trainer.sync_batchnorm=false"
    )


# -- each debug option, run -----------------------------------------------------------------------


# Less work per batch for the runs below: what they check does not depend on it.
SMALL = ["data.batch_size=8", "model.width=8"]


def run_dir_files(run_dir):
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.name != ".lock")


def test_debug_options_each_have_a_run_test():
    assert set(DEBUGS) == {"default", "fdr", "limit", "overfit", "profiler"}  # one test each, below


@pytest.mark.long
def test_debug_default_is_a_short_epoch_with_anomaly_detection_and_our_debug_logs(
    compose_train, tmp_path, recorders
):
    cfg = compose_train("debug=default", *SMALL, RECORD)
    with hydra_job_logging(cfg):
        train(cfg)
        classifier_level = logging_level("classifier.data")
        others = logging_level("PIL.PngImagePlugin")
    (recorder,) = recorders
    assert Counter(epoch for epoch, *_ in recorder.batches["train"]) == {0: 5}  # trainer=debug
    assert len(recorder.batches["val"]) == 3 + 3 and len(recorder.batches["test"]) == 3  # fit, then best.ckpt
    assert recorder.anomaly_detection == {True}
    assert (classifier_level, others) == ("DEBUG", "WARNING")
    assert (tmp_path / "run" / "metrics.json").is_file()


def logging_level(name: str) -> str:
    import logging

    return logging.getLevelName(logging.getLogger(name).getEffectiveLevel())


def test_debug_fdr_runs_one_batch_of_each_split_and_writes_nothing(compose_train, tmp_path, recorders):
    assert train(compose_train("debug=fdr", RECORD)) == {}
    (recorder,) = recorders
    assert {split: len(batches) for split, batches in recorder.batches.items()} == {
        "train": 1,
        "val": 1,
        "test": 1,
    }
    assert recorder.trainer.global_step == 1
    assert run_dir_files(tmp_path / "run") == []  # no checkpoints, reports or logger files


@pytest.mark.slow  # a whole run: make test-slow; trainer=debug's default run stays in make test
def test_debug_limit_runs_the_limited_batches_each_epoch(compose_train, tmp_path, recorders):
    # batches of 8, so every split is longer than its limit (train 143, val 36, test 45 batches)
    train(compose_train("debug=limit", *SMALL, "trainer.detect_anomaly=false", RECORD))
    (recorder,) = recorders
    trainer = recorder.trainer
    assert trainer.max_epochs == 3
    assert Counter(epoch for epoch, *_ in recorder.batches["train"]) == {0: 10, 1: 10, 2: 10}
    assert Counter(epoch for epoch, *_ in recorder.batches["val"]) == {0: 5, 1: 5, 2: 5, 3: 5}  # + final
    assert len(recorder.batches["test"]) == 5
    assert trainer.global_step == 30
    assert "split: test (40 images)" in (tmp_path / "run" / "report.txt").read_text()


@pytest.mark.slow  # a whole run: make test-slow; trainer=debug's default run stays in make test
def test_debug_overfit_trains_on_the_same_batches_and_drives_the_loss_down(compose_train, recorders):
    shorter = [
        "data.batch_size=8",
        "scheduler=none",  # no decay to 1% of the rate within these few steps
        "trainer.max_epochs=6",
        "trainer.detect_anomaly=false",
        "trainer.limit_test_batches=2",  # the final evaluation's test split
    ]
    train(compose_train("debug=overfit", *shorter, RECORD))
    (recorder,) = recorders
    per_epoch: dict[int, list] = {}
    for epoch, _, labels, _ in recorder.batches["train"]:
        per_epoch.setdefault(epoch, []).append(labels)
    assert len(per_epoch) == 6 and len(per_epoch[0]) == 3  # overfit_batches=3
    assert all(batches == per_epoch[0] for batches in per_epoch.values())  # no reshuffle
    assert recorder.train_loss[-1] < 0.3 * recorder.train_loss[0], recorder.train_loss


@pytest.mark.slow  # a whole run: make test-slow; trainer=debug's default run stays in make test
def test_debug_profiler_writes_time_per_hook_to_the_run_log(compose_train):
    limits = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]
    cfg = compose_train("debug=profiler", *SMALL, *limits)
    with hydra_job_logging(cfg) as log_file:
        train(cfg)
    log = log_file.read_text()
    for report in ("FIT", "VALIDATE", "TEST"):  # training, then the final evaluation of best.ckpt
        assert f"{report} Profiler Report" in log
    for hook in ("run_training_epoch", "[Strategy]SingleDeviceStrategy.training_step"):
        assert hook in log, hook


def test_one_class_is_refused_in_one_line(compose_train, tmp_path):
    from classifier.errors import UserError

    root = write_image_folder(tmp_path / "one", {"train": 3}, classes=("cat",))
    cfg = compose_train("data=imagefolder", f"data.root={root}")
    with pytest.raises(UserError, match=r"the data has 1 class \(cat\); a classifier needs at least two"):
        build_module(cfg, build_datamodule(cfg.data))


class Stop(Exception):
    pass


class CaptureOptimization(L.Callback):
    """Keeps what configure_optimizers built, then stops the fit before its first batch."""

    def on_train_start(self, trainer, pl_module):
        self.optimizer = trainer.optimizers[0]
        self.schedulers = trainer.lr_scheduler_configs
        raise Stop


def configured_optimization(cfg) -> CaptureOptimization:
    datamodule = build_datamodule(cfg.data)
    module = build_module(cfg, datamodule)
    capture = CaptureOptimization()
    with pytest.raises(Stop):
        build_trainer(cfg, extra_callbacks=[capture], with_loggers=False).fit(module, datamodule=datamodule)
    capture.net = module.net
    return capture


def assert_decay_only_on_weights(optimizer, net, weight_decay):
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(net.parameters()))
    for group in optimizer.param_groups:
        is_weight = {p.ndim > 1 for p in group["params"]}
        assert is_weight in ({True}, {False})  # biases and norms apart from weights
        assert group["weight_decay"] == (weight_decay if is_weight == {True} else 0.0)


def test_default_optimizer_is_adamw_with_per_step_warmup_then_cosine(compose_train):
    # digits: 1149 training images in batches of 64 with the last one dropped: 17 steps per epoch
    capture = configured_optimization(compose_train("trainer.max_epochs=10"))
    optimizer = capture.optimizer
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    assert_decay_only_on_weights(optimizer, capture.net, 0.05)
    (config,) = capture.schedulers
    assert config.interval == "step"
    scheduler = config.scheduler
    assert scheduler.base_lrs == [1e-3] * len(optimizer.param_groups)
    factor = scheduler.lr_lambdas[0]
    assert factor(0) == pytest.approx(1 / 17) and factor(16) == pytest.approx(1.0)  # warmup_epochs=1
    assert factor(18) < 1.0 and factor(10 * 17) == pytest.approx(0.01)  # cosine down to min_lr_ratio
    assert all(group["lr"] == pytest.approx(1e-3 / 17) for group in optimizer.param_groups)  # step 0


@pytest.mark.parametrize(("epochs", "warmup_steps"), [(1, 1), (3, 5), (10, 17)])
def test_warmup_is_at_most_a_tenth_of_the_run(epochs, warmup_steps, compose_train):
    """warmup_epochs=1 in a 1-epoch run used to ramp up the whole run and never decay."""
    capture = configured_optimization(compose_train(f"trainer.max_epochs={epochs}"))
    factor = capture.schedulers[0].scheduler.lr_lambdas[0]
    total = epochs * 17
    peak = max(range(total), key=factor)
    assert peak == warmup_steps - 1 and factor(peak) == pytest.approx(1.0)
    assert factor(total - 1) < 0.05  # decayed by the end of the run


def test_sgd_without_a_schedule_keeps_its_learning_rate(compose_train):
    capture = configured_optimization(compose_train("optimizer=sgd", "scheduler=none", "optimizer.lr=0.05"))
    optimizer = capture.optimizer
    assert type(optimizer) is torch.optim.SGD
    assert (optimizer.defaults["momentum"], optimizer.defaults["nesterov"]) == (0.9, True)
    assert {group["lr"] for group in optimizer.param_groups} == {0.05}
    assert_decay_only_on_weights(optimizer, capture.net, 5e-4)
    assert capture.schedulers == []


def test_a_pretrained_backbone_learns_at_its_scale_of_the_heads_rate(compose_train, tmp_path):
    from classifier.models import create_model

    torch.save(create_model("scratch_cnn", num_classes=10).state_dict(), tmp_path / "net.pth")
    cfg = compose_train(
        f"model.weights={tmp_path / 'net.pth'}", "module.pretrained_backbone_lr_scale=0.1", "scheduler=none"
    )
    capture = configured_optimization(cfg)
    head = {id(p) for p in capture.net.get_classifier().parameters()}
    for group in capture.optimizer.param_groups:
        in_head = {id(p) in head for p in group["params"]}
        assert in_head in ({True}, {False})
        assert group["lr"] == pytest.approx(1e-3 if in_head == {True} else 1e-4)


def available_options(message: str, group: str) -> list[str]:
    """The options Hydra lists under "Available options in 'group':", one per tab-indented line."""
    listing = message.split(f"Available options in '{group}':", 1)[1]
    options = []
    for line in listing.splitlines()[1:]:
        if not line.startswith("\t"):
            break
        options.append(line.strip())
    return options


@pytest.mark.parametrize("group, typo", [("model", "resnet"), ("data", "foo"), ("optimizer", "adam")])
def test_unknown_option_lists_the_valid_ones(compose_train, group, typo):
    with pytest.raises(MissingConfigException) as error:
        compose_train(f"{group}={typo}")
    message = str(error.value)
    assert message.startswith(f"In 'train': Could not find '{group}/{typo}'")
    assert available_options(message, group) == sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    with pytest.raises(ConfigCompositionException, match="Could not override 'data.bach_size'"):
        compose_train("data.bach_size=3")


def test_a_num_classes_other_than_the_datas_is_refused_in_one_line(compose_train):
    datamodule = build_datamodule(compose_train().data)
    with pytest.raises(UserError) as error:
        build_module(compose_train("model.num_classes=5"), datamodule)
    assert str(error.value) == "model.num_classes=5 but the data has 10 classes; leave it null to infer it"
    module = build_module(compose_train("model.num_classes=10"), datamodule).eval()  # the data's own: fine
    assert module(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_cifar_with_download_false_and_no_files_names_where_it_looked(compose_train, tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("data.download=false downloaded")

    monkeypatch.setattr("classifier.data.cifar.download_and_extract_archive", no_download)
    root = tmp_path / "empty"
    cfg = compose_train("data=cifar10", f"data.root={root}", "data.download=false")
    with pytest.raises(UserError) as error:
        build_datamodule(cfg.data)
    message = str(error.value)
    assert message.startswith(f"CIFAR-10 is not in data.root={root} (expected {root}/cifar-10-batches-py/")
    assert "data.download=false" in message and "\n" not in message


@pytest.mark.long
def test_train_returns_metrics_json_s_optimized_metric_to_a_sweeper(compose_train, tmp_path, caplog):
    from classifier.cli import run_task

    short = ["trainer=debug", *SMALL, "logger=none"]
    value = run_task("train", compose_train(*short, "optimized_metric=val/loss"))
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert value == written["val/loss"] and value != written["val/top1"]
    with pytest.raises(SystemExit) as exit_status:
        run_task("train", compose_train(*short, "optimized_metric=val/acc", "resume=false"))
    assert exit_status.value.code == 1
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error.startswith("optimized_metric=val/acc is not one of this run's metrics (test/ece, ")


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
