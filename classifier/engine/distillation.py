"""Knowledge distillation into the model being trained (the `distill` config group): the frozen
teacher, a checkpoint of this project or a timm model, and the loss of each kind.

The loss terms follow timm's `timm.task.distillation` (LogitDistillationTask, FeatureDistillationTask),
whose Task classes own the training loop; here the loop is Lightning's, so the terms are computed by
the classes below and combined in `ClassifierModule.training_step`. The teacher is held outside the
module's registered children: its weights stay out of the student's checkpoint and DDP's gradient
sync (each process builds its own copy), and copies of the module (EMA's average) share it instead
of copying it.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import get_pretrained_cfg
from torch import nn

from classifier.data.transforms import InputSpec
from classifier.engine.from_checkpoint import load_model
from classifier.errors import UserError
from classifier.files import existing_file, expand_path, file_sha256
from classifier.models.factory import create_model, pretrained_input
from classifier.models.weights import load_local_weights

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".ckpt",)


def feature_dim(net: nn.Module) -> int | None:
    """The width of a network's pooled pre-logits features (timm's head_hidden_size or num_features)."""
    return getattr(net, "head_hidden_size", None) or getattr(net, "num_features", None)


class TeacherNet(nn.Module):
    """A teacher network with its normalisation: logits, or pooled pre-logits features through timm's
    forward_features / forward_head. What timm's `DistillationTeacher` does; written here because
    DistillationTeacher wraps an already built network only from timm 1.0.26 on (before, it builds
    the model from a name and loads its file with timm's loader), and this project supports timm
    1.0.17 and loads a teacher as it loads any checkpoint (safely, by allow-list).

    Args:
        model: the teacher network (its classifier head predicts the student's classes).
        mean, std: the normalisation the teacher was trained with (per RGB channel).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean_kd", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std_kd", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize_input(
        self, images: torch.Tensor, student_mean: torch.Tensor, student_std: torch.Tensor
    ) -> torch.Tensor:
        """Images normalised for the student, normalised as the teacher's were instead."""
        return (images * student_std + student_mean - self.mean_kd) / self.std_kd

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if not return_features:
            return self.model(images)
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)


class Teacher:
    """The frozen teacher network and the input it expects. Not an nn.Module: assigned to a module's
    attribute it is not registered, so its weights are never in a state_dict or an optimizer.

    Args:
        net: the teacher with its normalisation.
        img_size: the side of the teacher's input; a student batch of another side is resized to it.
        description: how the reports name it.
    """

    def __init__(self, net: TeacherNet, img_size: int, description: str):
        net.eval()
        net.requires_grad_(False)
        self.net = net
        self.img_size = int(img_size)
        self.description = description

    def __deepcopy__(self, memo: dict) -> Teacher:
        return self  # frozen: a copy of the module (EMA's average) uses the same teacher

    def inputs(
        self, images: torch.Tensor, student_mean: torch.Tensor, student_std: torch.Tensor
    ) -> torch.Tensor:
        """A student batch as the teacher expects it: normalised as the teacher's training was, at
        its side. Normalising first and resizing after is the same as the other way round: both are
        linear per channel, and bilinear weights sum to one."""
        images = self.net.normalize_input(images.float(), student_mean, student_std)
        if images.shape[-1] != self.img_size or images.shape[-2] != self.img_size:
            size = (self.img_size, self.img_size)
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        return images

    @torch.no_grad()
    def run(self, images: torch.Tensor, spec: InputSpec, features: bool = False) -> torch.Tensor:
        """The teacher's logits (or pooled pre-logits features) for a batch normalised per `spec`,
        in float32; in bf16 autocast on a CUDA device that computes it."""
        device = images.device
        if self.net.mean_kd.device != device:
            self.net.to(device)
        mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return self.net(self.inputs(images, mean, std), return_features=features).float()


def _timm_teacher_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserError(
        f"distill.teacher={name!r} is neither a file nor a timm model (a checkpoint of this project:"
        f" a path to best.ckpt or last.ckpt){hint}"
    )


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith(CHECKPOINT_SUFFIXES) or expand_path(value).exists()


def load_checkpoint_teacher(path: str, class_names: Sequence[str]) -> tuple[Teacher, dict[str, str]]:
    """A teacher from a train.py checkpoint, rebuilt as eval.py rebuilds one (engine.from_checkpoint);
    its classes must be the student's, in the same order."""
    file = existing_file(path, "distill.teacher")
    saved = load_model(str(file))
    if saved.class_names != list(class_names):
        raise UserError(
            f"distill.teacher={path} was trained on other classes ({', '.join(saved.class_names[:5])}"
            f"{', ...' if len(saved.class_names) > 5 else ''}) than the data's"
            f" ({', '.join(list(class_names)[:5])}{', ...' if len(class_names) > 5 else ''})"
        )
    spec = saved.input_spec
    net = TeacherNet(saved.module.net, spec.mean, spec.std)
    teacher = Teacher(net, spec.img_size, f"checkpoint {file}")
    return teacher, {str(file): file_sha256(file)}


def load_timm_teacher(name: str, weights: str | None, num_classes: int) -> tuple[Teacher, dict[str, str]]:
    """A timm teacher with `weights` (a state_dict, timm or train.py checkpoint; loaded by the
    project's safe loader) or else the hub's weights; its head must have the data's class count.
    Its input (side, normalisation) is its pretrained config's."""
    _timm_teacher_name(name)
    files: dict[str, str] = {}
    if weights:
        file = existing_file(weights, "distill.teacher_weights")
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        try:
            new_head = load_local_weights(model, file)
        except UserError as exc:
            raise UserError(str(exc).replace("model.weights=", "distill.teacher_weights=", 1)) from exc
        if new_head:
            raise UserError(
                f"distill.teacher_weights={weights} has no {num_classes}-class head for {name}: a teacher"
                " must predict the data's classes"
            )
        files[str(file)] = file_sha256(file)
        description = f"timm {name} with weights {file}"
    else:
        hub_classes = getattr(get_pretrained_cfg(name), "num_classes", None)
        if hub_classes != num_classes:
            raise UserError(
                f"distill.teacher={name}: its hub weights predict {hub_classes} classes, the data"
                f" has {num_classes}; give distill.teacher_weights=FILE with a {num_classes}-class head"
            )
        try:
            model = create_model(name, num_classes=num_classes, pretrained=True)
        except UserError as exc:
            raise UserError(str(exc).replace("model.pretrained=true", f"distill.teacher={name}", 1)) from exc
        description = f"timm {name} (hub weights)"
    # timm's resolve_data_config over the pretrained config (ImageNet's 224 px when it has none)
    spec = pretrained_input(name) or {
        "img_size": 224,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
    }
    net = TeacherNet(model, spec["mean"], spec["std"])
    return Teacher(net, spec["img_size"], description), files


class Distillation(nn.Module):
    """What the kinds share: the teacher, named as the config names it, and its identity.

    Args:
        teacher: a train.py checkpoint (best.ckpt, last.ckpt) or a timm model name.
        teacher_weights: for a timm teacher, a local weights file; None takes the hub's weights.
        alpha: weight of the distillation term; the label loss gets 1 - alpha.
    """

    kind = "?"

    def __init__(self, teacher: str, teacher_weights: str | None = None, alpha: float = 0.5):
        super().__init__()
        if not isinstance(teacher, str) or not teacher:
            raise UserError(f"distill.teacher={teacher!r}: give a checkpoint path or a timm model name")
        if not 0 <= float(alpha) <= 1:
            raise UserError(f"distill.alpha={alpha} must be in [0, 1]")
        self.teacher_name = teacher
        self.teacher_weights = teacher_weights
        self.alpha = float(alpha)
        self.teacher: Teacher | None = None
        self.files: dict[str, str] = {}  # teacher file -> sha256
        self.input_spec: InputSpec | None = None  # the student's input

    def attach(self, net: nn.Module, class_names: Sequence[str], input_spec: InputSpec) -> None:
        """Load the teacher for a student `net` of these classes and input."""
        if _looks_like_path(self.teacher_name):
            if self.teacher_weights:
                raise UserError(
                    "distill.teacher_weights is for a timm teacher; a checkpoint teacher holds its weights"
                )
            self.teacher, self.files = load_checkpoint_teacher(self.teacher_name, class_names)
        else:
            self.teacher, self.files = load_timm_teacher(
                self.teacher_name, self.teacher_weights, len(class_names)
            )
        self.input_spec = input_spec
        log.info("distillation (%s): teacher %s", self.kind, self.teacher.description)

    def identity(self) -> dict[str, Any]:
        """What the checkpoint's run metadata keeps of the teacher: resuming checks the file is the same."""
        return {
            "kind": self.kind,
            "teacher": self.teacher_name,
            "teacher_weights": self.teacher_weights,
            "sha256": dict(self.files),
        }

    def settings(self) -> dict[str, float]:
        return {"alpha": self.alpha}

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self._teacher().run(images, self.input_spec)

    def _teacher(self) -> Teacher:
        if self.teacher is None:
            raise RuntimeError("the distillation's teacher is not loaded: call attach() first")
        return self.teacher

    needs_features = False

    def combine(
        self,
        label_loss: torch.Tensor,
        logits: torch.Tensor,
        features: torch.Tensor | None,
        images: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the training loss, its distillation term) for a batch of `images`, given the label loss
        and the student's logits (and pooled features for feature distillation)."""
        distill = self.distill_loss(logits, features, images)
        return (1 - self.alpha) * label_loss + self.alpha * distill, distill

    def distill_loss(
        self, logits: torch.Tensor, features: torch.Tensor | None, images: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError


def soft_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch (Hinton et al.
    2015; the T^2 keeps its gradients' scale as T changes), as timm's LogitDistillationTask."""
    student_log = F.log_softmax(student.float() / temperature, dim=-1)
    teacher_log = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = F.kl_div(student_log, teacher_log, reduction="batchmean", log_target=True)
    return kl * temperature**2


class SoftDistillation(Distillation):
    """(1 - alpha) * label loss + alpha * T^2 * KL(teacher || student at temperature T).

    Args:
        temperature: both distributions' softmax temperature (timm's typical 1 to 4).
    """

    kind = "soft"

    def __init__(
        self, teacher: str, teacher_weights: str | None = None, alpha: float = 0.5, temperature: float = 4.0
    ):
        super().__init__(teacher, teacher_weights, alpha)
        if not float(temperature) > 0:
            raise UserError(f"distill.temperature={temperature} must be above 0")
        self.temperature = float(temperature)

    def settings(self) -> dict[str, float]:
        return {"alpha": self.alpha, "temperature": self.temperature}

    def distill_loss(self, logits, features, images):
        return soft_distillation_loss(logits, self.teacher_logits(images), self.temperature)


class HardDistillation(Distillation):
    """DeiT's hard distillation: (1 - alpha) * label loss + alpha * CE(student, teacher's top class)
    (DeiT: alpha 0.5)."""

    kind = "hard"

    def distill_loss(self, logits, features, images):
        return F.cross_entropy(logits, self.teacher_logits(images).argmax(dim=-1))


class FeatureDistillation(Distillation):
    """label loss + weight * MSE(projection(student's pooled features), teacher's pooled features),
    as timm's FeatureDistillationTask; the projection is a linear layer, learnt with the student,
    when the widths differ (its weights are in the checkpoint; the model is the student alone).

    Args:
        weight: of the feature term (timm's distill_loss_weight); the label loss keeps weight 1.
    """

    kind = "feature"
    needs_features = True

    def __init__(self, teacher: str, teacher_weights: str | None = None, weight: float = 1.0):
        super().__init__(teacher, teacher_weights, alpha=0.0)
        if not float(weight) >= 0:
            raise UserError(f"distill.weight={weight} must be 0 or more")
        self.weight = float(weight)
        self.projection: nn.Module = nn.Identity()

    def settings(self) -> dict[str, float]:
        return {"weight": self.weight}

    def attach(self, net: nn.Module, class_names: Sequence[str], input_spec: InputSpec) -> None:
        if not (hasattr(net, "forward_features") and hasattr(net, "forward_head")):
            raise UserError(
                f"distill=feature needs a student with timm's forward_features and forward_head;"
                f" {type(net).__name__} has not: use distill=soft or distill=hard"
            )
        super().attach(net, class_names, input_spec)
        student_dim, teacher_dim = feature_dim(net), feature_dim(self.teacher.net.model)
        if student_dim is None or teacher_dim is None:
            raise UserError("distill=feature: the student or the teacher has no num_features to match")
        if student_dim != teacher_dim:
            log.info("distillation: a linear projection from %d to %d features", student_dim, teacher_dim)
            self.projection = nn.Linear(student_dim, teacher_dim)

    def combine(self, label_loss, logits, features, images):
        distill = self.distill_loss(logits, features, images)
        return label_loss + self.weight * distill, distill

    def distill_loss(self, logits, features, images):
        if features is None:
            raise RuntimeError("feature distillation needs the student's pooled features")
        teacher = self._teacher().run(images, self.input_spec, features=True)
        return F.mse_loss(self.projection(features.float()), teacher)
