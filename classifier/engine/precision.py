"""The precision a Trainer runs in, and mixed precision on CPUs that compute bf16 natively: training
steps in bf16 autocast, evaluation in float32. On 2 AVX512-BF16 cores scratch_cnn trains 1.7x faster
in bf16 at the same accuracy (one CIFAR-10 epoch: test top-1 0.6505 vs 0.6535 in float32), but
val/test metrics, eval.py and predict.py must agree with a float32 evaluation of the same weights,
and evaluation is a small share of a run."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from classifier.errors import UserError


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX; Linux reports it in
    /proc/cpuinfo). Elsewhere bf16 is emulated and slower than float32."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool(set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


class TrainingBF16(MixedPrecision):
    """Lightning's bf16-mixed for training steps only; validation, test and predict run in float32."""

    def __init__(self) -> None:
        super().__init__("bf16-mixed", device="cpu")

    def val_step_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def test_step_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def predict_step_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


# resolve_precision's answer for trainer.precision=auto on a CPU with bf16 arithmetic
CPU_BF16_TRAINING = "bf16-mixed training, 32-true evaluation"


def resolve_precision(precision: str | int | None, accelerator: str | None) -> str | int | None:
    """trainer.precision=auto: bf16-mixed on a CUDA GPU that supports it (Ampere and newer), 16-mixed
    on older ones; on the CPU bf16-mixed training steps (TrainingBF16: evaluation stays float32)
    where the cores compute bf16 natively, else 32-true. Other values as given."""
    if str(precision) != "auto":
        return precision
    wants_gpu = str(accelerator).lower() in ("gpu", "cuda", "auto", "none")
    if wants_gpu and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return CPU_BF16_TRAINING if cpu_computes_bf16() else "32-true"


def precision_arguments(precision: str | int | None, accelerator: str | None) -> dict[str, Any]:
    """Trainer(precision=..., plugins=[...]) for trainer.precision."""
    resolved = resolve_precision(precision, accelerator)
    if resolved == CPU_BF16_TRAINING:
        return {"precision": None, "plugins": [TrainingBF16()]}
    return {"precision": resolved, "plugins": []}


def check_accelerator(accelerator: str | None) -> None:
    """Raises UserError when a GPU is asked for on a machine without one (Lightning's own message,
    "No supported gpu backend found!", does not say what to do)."""
    if str(accelerator).lower() not in ("gpu", "cuda"):
        return
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if not torch.cuda.is_available() and not (str(accelerator).lower() == "gpu" and has_mps):
        raise UserError(
            f"trainer.accelerator={accelerator} but torch finds no GPU on this machine:"
            " use trainer=cpu (or trainer.accelerator=auto, which takes a GPU when there is one)"
        )


def check_sync_batchnorm(sync_batchnorm: object, accelerator: str | None) -> None:
    """Raises UserError for SyncBatchNorm on the CPU: torch's layer is CUDA-only, and it fails with a
    ValueError only once the processes have started (trainer=ddp and trainer=slurm turn it on)."""
    on_cpu = str(accelerator).lower() == "cpu" or (
        str(accelerator).lower() == "auto" and not torch.cuda.is_available()
    )
    if sync_batchnorm and on_cpu:
        raise UserError(
            "trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm runs on CUDA only):"
            f" with trainer.accelerator={accelerator} set trainer.sync_batchnorm=false"
        )
