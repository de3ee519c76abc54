"""Knowledge distillation (distill=soft|hard|feature): the loss against hand computation, the teacher's
input conversion, teachers from a checkpoint and from timm, what the student's checkpoint keeps, the
reports, resuming, and mistakes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import CONF_DIR, REPO, compose_config
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from classifier.cli import prepare_argv
from classifier.data.transforms import InputSpec
from classifier.engine.distillation import (
    FeatureDistillation,
    HardDistillation,
    SoftDistillation,
    Teacher,
    TeacherNet,
)
from classifier.engine.module import ClassifierModule
from classifier.errors import UserError
from classifier.models.scratch_cnn import ScratchCNN
from classifier.run.checkpoints import DISTILLATION_KEY, RUN_KEY, load_checkpoint
from classifier.tasks.evaluate import evaluate
from classifier.tasks.train import train

CLASSES = [str(i) for i in range(10)]
FAVOURED = 3  # the class a disagreeing teacher always predicts
STUDENT_SPEC = InputSpec(img_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=5",
    "model.width=8",
    "optimizer.lr=1e-2",
    "logger=none",
]


class TinyTeacher(nn.Module):
    """A teacher with timm's feature API whose logits favour `FAVOURED` whatever the image."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, kernel_size=1)
        self.num_features = dim
        self.head = nn.Linear(dim, len(CLASSES))
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.copy_(torch.linspace(-1, 1, len(CLASSES)))
            self.head.bias[FAVOURED] = 4.0

    def forward_features(self, x):
        return self.conv(x)

    def forward_head(self, x, pre_logits: bool = False):
        pooled = x.mean(dim=(2, 3))
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def with_tiny_teacher(distillation, img_size: int = 32):
    """`distillation` attached to a TinyTeacher (ImageNet-normalised, `img_size` px) for a 32 px student."""
    tiny = TinyTeacher()
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    distillation.teacher = Teacher(TeacherNet(tiny, *imagenet), img_size, "tiny")
    distillation.input_spec = STUDENT_SPEC
    return distillation, tiny


def student_module(distillation) -> ClassifierModule:
    from classifier.optim.factory import create_optimizer

    torch.manual_seed(0)
    module = ClassifierModule(
        ScratchCNN(num_classes=len(CLASSES), width=8),
        CLASSES,
        optimizer=lambda net, backbone_lr_scale: create_optimizer(net, lr=1e-2),
        distillation=distillation,
    )
    return module


def training_loss(module: ClassifierModule, images, labels) -> torch.Tensor:
    with warnings.catch_warnings():  # self.log without a Trainer
        warnings.simplefilter("ignore")
        return module.training_step([images, labels], 0)


def batch(n: int = 8):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=generator), torch.arange(n) % len(CLASSES)


def test_soft_loss_is_label_loss_and_t_squared_kl_with_the_teacher():
    distillation, _ = with_tiny_teacher(SoftDistillation("tiny", alpha=0.7, temperature=3.0))
    module = student_module(distillation)
    images, labels = batch()
    loss = training_loss(module, images, labels)
    student = module(images)
    teacher = TinyTeacher().head.bias.expand(len(images), -1)  # its logits whatever the image
    p_teacher = F.softmax(teacher / 3.0, dim=-1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(student / 3.0, dim=-1))).sum(dim=-1).mean()
    expected = 0.3 * F.cross_entropy(student, labels) + 0.7 * 9.0 * kl
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert kl.item() > 0.1  # the teacher disagrees: the term is not negligible


def test_hard_loss_is_label_loss_and_cross_entropy_with_the_teachers_top_class():
    distillation, _ = with_tiny_teacher(HardDistillation("tiny", alpha=0.5))
    module = student_module(distillation)
    images, labels = batch()
    loss = training_loss(module, images, labels)
    student = module(images)
    teacher_labels = torch.full_like(labels, FAVOURED)
    expected = 0.5 * F.cross_entropy(student, labels) + 0.5 * F.cross_entropy(student, teacher_labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_teachers_input_is_unnormalised_resized_and_normalised_as_the_teachers():
    distillation, tiny = with_tiny_teacher(SoftDistillation("tiny"), img_size=48)
    images, _ = batch(2)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (STUDENT_SPEC.mean, STUDENT_SPEC.std))
    pixels = images * std + mean
    resized = F.interpolate(pixels, size=(48, 48), mode="bilinear", antialias=True, align_corners=False)
    imagenet_mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    imagenet_std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = (resized - imagenet_mean) / imagenet_std
    converted = distillation.teacher.inputs(images, mean, std)
    assert converted.shape == (2, 3, 48, 48)
    torch.testing.assert_close(converted, expected, atol=1e-5, rtol=1e-5)
    features = distillation.teacher.run(images, STUDENT_SPEC, features=True)
    torch.testing.assert_close(features, tiny.forward_head(tiny.forward_features(expected), pre_logits=True))


def test_feature_loss_matches_a_learnt_projection_of_the_students_features_and_trains_it():
    distillation = FeatureDistillation("tiny", weight=2.0)
    distillation.projection = nn.Linear(64, 16)  # what attach() makes: scratch_cnn width 8 has 64 features
    distillation, tiny = with_tiny_teacher(distillation)
    module = student_module(distillation)
    images, labels = batch()
    loss = training_loss(module, images, labels)
    logits, features = module.forward_with_features(images)
    torch.testing.assert_close(logits, module(images))
    teacher_features = distillation.teacher.run(images, STUDENT_SPEC, features=True)
    expected = F.cross_entropy(logits, labels) + 2.0 * F.mse_loss(
        distillation.projection(features), teacher_features
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # The projection is the module's, so it is optimised and saved; the teacher is neither.
    optimizer = module.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in distillation.projection.parameters()} <= optimised
    assert not {id(p) for p in tiny.parameters()} & optimised
    keys = module.state_dict().keys()
    assert {"distillation.projection.weight", "distillation.projection.bias"} <= keys
    assert not any("conv" in key or key.startswith("distillation.teacher") for key in keys)
    before = distillation.projection.weight.detach().clone()
    for _ in range(3):
        optimizer.zero_grad()
        training_loss(module, images, labels).backward()
        optimizer.step()
    assert not torch.equal(before, distillation.projection.weight)
    assert all(p.grad is None for p in tiny.parameters())


def test_a_copy_of_the_module_shares_the_teacher():
    import copy

    distillation, _ = with_tiny_teacher(SoftDistillation("tiny"))
    module = student_module(distillation)
    assert (
        copy.deepcopy(module).distillation.teacher is distillation.teacher
    )  # EMA's average copies the module


def disagreeing_checkpoint(source: Path, destination: Path, class_names: list[str] | None = None) -> Path:
    """`source` (a train.py checkpoint) with a head that always favours FAVOURED (and other class names)."""
    checkpoint = load_checkpoint(source)
    state = checkpoint["state_dict"]
    state["net.head.weight"].zero_()
    state["net.head.bias"].zero_()
    state["net.head.bias"][FAVOURED] = 5.0
    if class_names is not None:
        checkpoint[RUN_KEY]["class_names"] = class_names
    torch.save(checkpoint, destination)
    return destination


def test_bad_teachers_are_one_line_naming_the_key(small_digits_run, tmp_path):
    best = small_digits_run[0] / "checkpoints" / "best.ckpt"
    net = ScratchCNN(num_classes=10, width=8)
    cases = [
        (SoftDistillation(str(tmp_path / "gone.ckpt")), "distill.teacher=.*gone.ckpt does not exist"),
        (SoftDistillation("resnet_nope"), "distill.teacher='resnet_nope' is neither a file nor a timm model"),
        (
            SoftDistillation("test_resnet", teacher_weights=str(tmp_path / "no.pth")),
            "distill.teacher_weights=",
        ),
        (
            SoftDistillation("test_resnet"),
            "distill.teacher=test_resnet: its hub weights predict 1000 classes",
        ),
    ]
    shuffled = disagreeing_checkpoint(best, tmp_path / "other.ckpt", class_names=CLASSES[::-1])
    cases.append(
        (SoftDistillation(str(shuffled)), "distill.teacher=.*other.ckpt was trained on other classes")
    )
    import timm

    five = tmp_path / "five.pth"
    torch.save(timm.create_model("test_resnet", num_classes=5).state_dict(), five)
    cases.append(
        (SoftDistillation("test_resnet", str(five)), "distill.teacher_weights=.* has no 10-class head")
    )
    for distillation, line in cases:
        with pytest.raises(UserError, match=line) as error:
            distillation.attach(net, CLASSES, STUDENT_SPEC)
        assert "\n" not in str(error.value)
    with pytest.raises(SystemExit) as exit_status:
        prepare_argv("train", CONF_DIR, ["train.py", "distill=soft", f"hydra.run.dir={tmp_path}/run"])
    assert exit_status.value.code == (
        "[ERROR] missing value for 'distill.teacher': set it on the command line, e.g. distill.teacher=..."
    )
    with pytest.raises(UserError, match=r"distill.alpha=1.5 must be in \[0, 1\]"):
        SoftDistillation(str(best), alpha=1.5)


@pytest.mark.slow  # three short runs and an eval: ~40 s on 2 cores
def test_a_checkpoint_teacher_is_followed_and_left_out_of_the_students_checkpoint(small_digits_run, tmp_path):
    best = small_digits_run[0] / "checkpoints" / "best.ckpt"
    teacher = disagreeing_checkpoint(best, tmp_path / "teacher.ckpt")
    runs = {}
    for alpha in (0.0, 0.95):
        run_dir = tmp_path / f"alpha{alpha}"
        overrides = [*SHORT, "distill=soft", f"distill.teacher={teacher}", f"distill.alpha={alpha}"]
        runs[alpha] = (run_dir, train(compose_config("train", run_dir, overrides)))
        GlobalHydra.instance().clear()
    # The teacher says FAVOURED for every image: the student follows it when alpha says so.
    assert runs[0.95][1]["val/agreement"] > 0.8
    assert runs[0.0][1]["val/agreement"] < 0.4
    assert runs[0.95][1]["val/teacher_top1"] == pytest.approx(0.1, abs=0.03)  # one class of ten
    run_dir, metrics = runs[0.95]
    assert set(json.loads((run_dir / "metrics.json").read_text())) >= {"test/teacher_top1", "test/agreement"}
    card = yaml.safe_load((run_dir / "model_card.yaml").read_text())["distillation"]
    assert card["kind"] == "soft" and card["teacher"] == str(teacher) and card["alpha"] == 0.95
    assert card["test"]["agreement"] == pytest.approx(metrics["test/agreement"])
    assert len(card["sha256"][str(teacher)]) == 64
    assert f"checkpoint {teacher}" in (run_dir / "report.txt").read_text()
    # The student's checkpoint: its own weights only, the teacher's identity in the run metadata.
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    assert all(key.startswith(("net.", "val_top1_best")) for key in checkpoint["state_dict"])
    assert checkpoint[RUN_KEY][DISTILLATION_KEY]["sha256"] == card["sha256"]
    again = evaluate(
        compose_config("eval", tmp_path / "eval", [f"ckpt_path={run_dir}/checkpoints/best.ckpt"])
    )
    assert again["test/top1"] == pytest.approx(metrics["test/top1"])
    assert "test/agreement" not in again


@pytest.mark.slow  # a short run with a timm teacher at 160 px and an eval: ~30 s on 2 cores
def test_a_timm_teacher_from_a_weights_file_for_feature_distillation(tmp_path):
    import timm

    weights = tmp_path / "test_resnet.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=10).state_dict(), weights)
    run_dir = tmp_path / "run"
    overrides = [
        *SHORT,
        "trainer.limit_train_batches=2",
        "distill=feature",
        "distill.teacher=test_resnet",
        f"distill.teacher_weights={weights}",
    ]
    metrics = train(compose_config("train", run_dir, overrides))
    GlobalHydra.instance().clear()
    assert 0 <= metrics["val/teacher_top1"] <= 1 and 0 <= metrics["val/agreement"] <= 1
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    projection = checkpoint["state_dict"]["distillation.projection.weight"]
    assert projection.shape == (96, 64)  # test_resnet's 96 features from scratch_cnn's 64
    assert not any(key.startswith("distillation.teacher") for key in checkpoint["state_dict"])
    card = yaml.safe_load((run_dir / "model_card.yaml").read_text())["distillation"]
    assert card["kind"] == "feature" and card["teacher_weights"] == str(weights) and card["weight"] == 1.0
    again = evaluate(
        compose_config("eval", tmp_path / "eval", [f"ckpt_path={run_dir}/checkpoints/best.ckpt"])
    )
    assert again["test/top1"] == pytest.approx(metrics["test/top1"])


@pytest.mark.slow  # three short runs: ~35 s on 2 cores
def test_resuming_with_another_teacher_file_is_refused_and_with_the_same_one_continues(
    small_digits_run, tmp_path
):
    best = small_digits_run[0] / "checkpoints" / "best.ckpt"
    teacher = tmp_path / "teacher.ckpt"
    shutil.copy(best, teacher)
    run_dir = tmp_path / "run"
    overrides = [*SHORT, "trainer.limit_train_batches=2", "distill=hard", f"distill.teacher={teacher}"]
    train(compose_config("train", run_dir, overrides))
    GlobalHydra.instance().clear()
    disagreeing_checkpoint(best, tmp_path / "changed.ckpt")
    shutil.copy(tmp_path / "changed.ckpt", teacher)  # same path, other weights
    longer = [*overrides, "trainer.max_epochs=2"]
    with pytest.raises(UserError, match="distill.teacher=.*teacher file differs.*resume=false") as error:
        train(compose_config("train", run_dir, longer))
    assert "\n" not in str(error.value)
    GlobalHydra.instance().clear()
    shutil.copy(best, teacher)
    train(compose_config("train", run_dir, longer))
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 1  # its second epoch


@pytest.mark.slow
@pytest.mark.process
def test_the_documented_command_as_typed(small_digits_run, tmp_path):
    best = small_digits_run[0] / "checkpoints" / "best.ckpt"
    command = [
        sys.executable,
        "train.py",
        "distill=soft",
        f"distill.teacher={best}",
        *SHORT,
        "trainer.limit_train_batches=2",
        "measure_cpu_speed=false",
        f"hydra.run.dir={tmp_path}/run",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["test/agreement"] <= 1
