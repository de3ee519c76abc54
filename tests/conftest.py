"""Shared fixtures: configs composed with Hydra's compose API as users override them, generated
image folders, and one default digits run shared by the tests that need a trained checkpoint."""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
# Quiet, CPU-only versions of whatever the test composes.
QUIET = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
# Class colours of generated images: each class is a distinct, easily learnt colour.
PALETTE = [(220, 40, 40), (40, 200, 60), (40, 70, 220), (230, 200, 40), (170, 60, 200)]


def compose_config(
    name: str, output_dir: Path, overrides: Sequence[str] = (), quiet: bool = True
) -> DictConfig:
    """Compose conf/<name>.yaml with `overrides`, as `python <name>.py overrides` would, writing to
    `output_dir`; `quiet` adds the QUIET overrides first."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(name, overrides=[*(QUIET if quiet else []), *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def compose_train(tmp_path: Path) -> Callable[..., DictConfig]:
    def _compose(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        return compose_config("train", output_dir or tmp_path / "run", overrides)

    return _compose


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """The readable-image cache goes to the test's own folder, not ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def restore_global_state():
    """Lightning's seed_everything sets environment variables; Hydra keeps a global instance."""
    environ = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(environ)
    GlobalHydra.instance().clear()


@pytest.fixture(autouse=True)
def propagate_classifier_logs():
    # Hydra's logging config (applied by an earlier subprocess-free test) may stop propagation.
    logging.getLogger("classifier").propagate = True


def write_image(path: Path, color: tuple[int, int, int], size: int, rng: np.random.Generator) -> None:
    noise = rng.integers(-25, 26, size=(size, size, 3))
    pixels = np.clip(np.asarray(color) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_image_folder(
    root: Path,
    splits: dict[str, int],
    classes: Sequence[str] = ("cat", "dog", "fox"),
    size: int = 24,
    seed: int = 0,
) -> Path:
    """root/<split>/<class>/<i>.{jpg,png}: `splits[split]` images per class, alternating formats."""
    rng = np.random.default_rng(seed)
    for split, count in splits.items():
        for label, name in enumerate(classes):
            for i in range(count):
                write_image(
                    root / split / name / f"{i:03d}.{'jpg' if i % 2 else 'png'}", PALETTE[label], size, rng
                )
    return root


def write_cifar_batches(
    root: Path, dataset: str = "cifar10", images_per_file: int = 20, seed: int = 0
) -> list[str]:
    """Files laid out and named as torchvision's CIFAR-10 / CIFAR-100 (random pixels).
    Returns the class names."""
    from torchvision.datasets import CIFAR10, CIFAR100

    spec = {"cifar10": (CIFAR10, "labels", 10), "cifar100": (CIFAR100, "fine_labels", 100)}
    torchvision_dataset, label_key, num_classes = spec[dataset]
    rng = np.random.default_rng(seed)
    folder = root / torchvision_dataset.base_folder
    folder.mkdir(parents=True)
    for name, _ in torchvision_dataset.train_list + torchvision_dataset.test_list:
        entry = {
            "data": rng.integers(0, 256, size=(images_per_file, 3072), dtype=np.uint8),
            label_key: [i % num_classes for i in range(images_per_file)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    names = [f"{dataset}_class{i}" for i in range(num_classes)]
    with open(folder / torchvision_dataset.meta["filename"], "wb") as f:
        pickle.dump({torchvision_dataset.meta["key"]: names}, f)
    return names


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """The default `python train.py` (digits, scratch_cnn, 10 epochs): run directory and metrics."""
    from classifier.training import train

    output_dir = tmp_path_factory.mktemp("digits_run")
    cfg = compose_config("train", output_dir)
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    return output_dir, metrics
