"""model_card.yaml: what a run's model is, what it was trained on and how, how well it does
(accuracy and calibration on val and test), how fast it predicts on a CPU, and on what hardware
and software it was made."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from classifier.data.base import ClassificationDataModule
from classifier.data.transforms import InputSpec
from classifier.engine.module import ClassifierModule
from classifier.evaluation.machine import cpu_inference_speed, hardware, software
from classifier.evaluation.reports import EvaluationReport
from classifier.files import write_atomically

log = logging.getLogger(__name__)

MODEL_CARD_FILE = "model_card.yaml"


def count_parameters(net: nn.Module) -> dict[str, int]:
    return {
        "parameters": sum(p.numel() for p in net.parameters()),
        "trainable_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
    }


def _split_metrics(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """{'val/top1': x, 'test/ece': y} as {'val': {'top1': x}, 'test': {'ece': y}}."""
    nested: dict[str, dict[str, float]] = {}
    for key, value in sorted(metrics.items()):
        split, _, name = key.partition("/")
        nested.setdefault(split, {})[name] = round(float(value), 6)
    return nested


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    trainer = config.get("trainer") or {}
    data = config.get("data") or {}
    return {
        "optimizer": config.get("optimizer"),
        "scheduler": config.get("scheduler"),
        "augment": config.get("augment"),
        "label_smoothing": (config.get("module") or {}).get("label_smoothing"),
        "batch_size": data.get("batch_size"),
        "max_epochs": trainer.get("max_epochs"),
        "precision": trainer.get("precision"),
        "seed": config.get("seed"),
        "callbacks": sorted(config.get("callbacks") or {}),
    }


def model_card(
    *,
    net: nn.Module,
    class_names: Sequence[str],
    input_spec: InputSpec,
    config: dict[str, Any],
    report: EvaluationReport,
    split_sizes: dict[str, int],
    checkpoint: str | None,
    temperature: float,
    training: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
    data_issues: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model card's content (see the module docstring); `training` holds the run's seconds,
    epochs, steps and speed when known, `inference` cpu_inference_speed's figures, `data_issues`
    what data.exclude and data.relabel did (ClassificationDataModule.issues_applied)."""
    model_cfg = dict(config.get("model") or {})
    data_cfg = dict(config.get("data") or {})
    card: dict[str, Any] = {
        "model": {
            "name": model_cfg.get("name"),
            "architecture": f"{type(net).__module__}.{type(net).__qualname__}",
            **count_parameters(net),
            "pretrained": bool(model_cfg.get("pretrained")),
            "weights": model_cfg.get("weights"),
            "checkpoint": checkpoint,
            "temperature": temperature,
        },
        "input": input_spec.to_dict(),
        "data": {
            "module": str(data_cfg.get("_target_", "")).rsplit(".", 1)[-1],
            "root": data_cfg.get("root"),
            "csv": data_cfg.get("csv"),
            "num_classes": len(class_names),
            "class_names": list(class_names),
            "images": split_sizes,
            **(data_issues or {}),
        },
        "recipe": _recipe(config),
        "metrics": _split_metrics(report.metrics),
        "report_split": report.split,
    }
    if report.calibration:
        card["calibration"] = report.calibration
    if report.distillation:
        card["distillation"] = report.distillation
    if report.tta:
        card["tta"] = {key: value for key, value in report.tta.items() if key != "metrics"}
    if inference:
        card["inference_cpu"] = inference
    if training:
        card["training"] = training
    card["hardware"] = hardware()
    card["software"] = software()
    card["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return card


def _plain(value: Any) -> Any:
    """Only the types YAML's safe dumper writes: str/int/float/bool/None, lists and dicts of them."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    for kind in (str, int, float):  # subclasses too: torch.__version__ is a str subclass
        if isinstance(value, kind):
            return kind(value)
    if hasattr(value, "item"):  # numpy and torch scalars
        return _plain(value.item())
    return str(value)


def write_model_card(output_dir: Path, card: dict[str, Any]) -> Path:
    card = _plain(card)
    path = Path(output_dir) / MODEL_CARD_FILE
    # safe_dump: plain YAML whatever the strings hold (class names are folder names, may read `${x}`)
    text = yaml.safe_dump(card, sort_keys=False, allow_unicode=True, width=110)
    write_atomically(text.encode(), path)
    return path


def write_run_model_card(
    output_dir: Path,
    module: ClassifierModule,
    datamodule: ClassificationDataModule,
    config: dict,
    report: EvaluationReport,
    checkpoint: str | None,
    training: dict | None,
    measure_cpu_speed: bool = True,
) -> None:
    """model_card.yaml, with the CPU inference figures when `measure_cpu_speed`."""
    spec = datamodule.input_spec
    inference = cpu_inference_speed(module.net, spec.img_size) if measure_cpu_speed else None
    card = model_card(
        net=module.net,
        class_names=module.class_names,
        input_spec=spec,
        config=config,
        report=report,
        split_sizes=datamodule.split_sizes(),
        checkpoint=checkpoint,
        temperature=module.temperature,
        training=training,
        inference=inference,
        data_issues=datamodule.issues_applied,
    )
    log.info("model card: %s", write_model_card(output_dir, card))
