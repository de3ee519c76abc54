"""int8 post-training quantization of an exported ONNX model with onnxruntime's quantization tools:
static (QDQ, activations calibrated on real images) or dynamic (activations quantized at run time),
and the checks that something was quantized at all."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry

from classifier.errors import UserError

log = logging.getLogger(__name__)

STATIC, DYNAMIC = "int8", "int8_dynamic"
MODES = (STATIC, DYNAMIC)
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# Operators with weights: quantizing pays only when some of these turn int8 (the rest of the graph
# is cheap next to them).
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Attention", "LSTM", "Gather")
SUPPORTED = {STATIC: set(QDQRegistry), DYNAMIC: set(IntegerOpsRegistry)}
CALIBRATION_BATCH = 32


def describe(mode: str, method: str) -> str:
    """The quantization in words, for the sidecar and the model card."""
    if mode == STATIC:
        return (
            "static, QDQ format: 7-bit int8 weights (per output channel, reduce_range) and uint8"
            " activations (U8S8),"
            f" activation ranges calibrated with {method} (onnxruntime.quantization.quantize_static"
            " after quant_pre_process)"
        )
    return (
        "dynamic: uint8 weights (per output channel), activations quantized at run time from each"
        " batch's range (onnxruntime.quantization.quantize_dynamic after quant_pre_process)"
    )


class ImageBatches(CalibrationDataReader):
    """The calibration images (already eval-transformed, NCHW float32) in batches, as onnxruntime's
    calibrator reads them."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = CALIBRATION_BATCH):
        self.images, self.input_name, self.batch_size = images, input_name, batch_size
        self.start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.images):
            return None
        batch = self.images[self.start : self.start + self.batch_size]
        self.start += self.batch_size
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:
        self.start = 0


def quantize_onnx(
    float_path: Path,
    int8_path: Path,
    mode: str,
    calibration: CalibrationDataReader | None = None,
    method: str = "minmax",
) -> list[str]:
    """Write `float_path`'s model quantized to int8 at `int8_path` (mode: int8 = static, needs
    `calibration`; int8_dynamic = dynamic). Returns the operators with weights left in float.

    Raises:
        UserError: the model has no operator whose weights onnxruntime quantizes in this mode.
    """
    model = onnx.load(str(float_path))
    refuse_unquantizable(model, mode)
    with tempfile.TemporaryDirectory(dir=int8_path.parent, prefix=f".{int8_path.name}.") as folder:
        prepared = Path(folder) / "prepared.onnx"
        # onnxruntime's advice: shape inference and graph optimisation first (folds what the
        # exporter left apart, gives the quantizer every tensor's shape). ONNX's own shape inference:
        # onnxruntime's symbolic one is meant for transformers and fails on torch.onnx's Reshape of
        # a variable batch.
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        if mode == STATIC:
            # U8S8 (uint8 activations, int8 weights) with 7-bit weights (reduce_range). onnxruntime's
            # x86 int8 kernels multiply uint8 by int8 (VPMADDUBSW): with full 8-bit weights the pairwise
            # sums can saturate on CPUs without VNNI (AVX2, most CI machines), which costs accuracy there;
            # 7-bit weights cannot saturate, so the file is right on every x86 CPU. S8S8 avoids it too
            # but ran at 0.8x float's images/s here, U8S8 at 1.9x (docs/performance.md).
            quantize_static(
                str(prepared),
                str(int8_path),
                calibration,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                reduce_range=True,
                per_channel=True,
                calibrate_method=CALIBRATION_METHODS[method],
            )
        else:
            # uint8 weights: onnxruntime's CPU ConvInteger takes uint8 weights only.
            quantize_dynamic(str(prepared), str(int8_path), weight_type=QuantType.QUInt8, per_channel=True)
    return float_weighted_nodes(onnx.load(str(int8_path)))


def refuse_unquantizable(model: onnx.ModelProto, mode: str) -> None:
    ops = sorted({node.op_type for node in model.graph.node})
    weighted = SUPPORTED[mode] & set(WEIGHTED_OPS)
    if not weighted & set(ops):
        raise UserError(
            f"quantize={mode}: nothing to quantize: onnxruntime quantizes the weights of"
            f" {', '.join(sorted(weighted))}, and this model has only {', '.join(ops) or 'no operators'}"
        )


def float_weighted_nodes(model: onnx.ModelProto) -> list[str]:
    """Operators that multiply by a float weight tensor (an initializer of 2+ dimensions) that did not
    go through a DequantizeLinear: what the quantizer left in float, e.g. 'Gemm /fc/Gemm'."""
    float_weights = {
        tensor.name
        for tensor in model.graph.initializer
        if tensor.data_type == onnx.TensorProto.FLOAT and len(tensor.dims) >= 2
    }
    return [
        f"{node.op_type} {node.name}".strip()
        for node in model.graph.node
        if node.op_type in WEIGHTED_OPS and float_weights.intersection(node.input)
    ]


def evenly_over_classes(targets: Sequence[int], count: int, num_classes: int) -> list[int]:
    """Indices of `count` images (all when there are fewer), the same number from each class (one more
    for the first classes when it does not divide), spread evenly over each class's images;
    deterministic."""
    targets = np.asarray(targets)
    per_class = [np.flatnonzero(targets == label) for label in range(num_classes)]
    per_class = [indices for indices in per_class if len(indices)]
    quotas = [0] * len(per_class)
    remaining = min(count, len(targets))
    while remaining:  # round-robin, so a small class's unused share goes to the others
        for i, indices in enumerate(per_class):
            if remaining and quotas[i] < len(indices):
                quotas[i] += 1
                remaining -= 1
    picked = []
    for indices, quota in zip(per_class, quotas, strict=True):
        positions = np.linspace(0, len(indices) - 1, num=quota).round().astype(int) if quota else []
        picked += [int(indices[p]) for p in positions]
    return sorted(picked)
