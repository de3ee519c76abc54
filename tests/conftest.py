"""Shared fixtures: configs composed with Hydra's compose API as users override them, generated
image folders, trained runs shared by the tests that need a checkpoint (the default 10-epoch one, and a
cheap one for the fast tests), a callback that records what a run did batch by batch, and a one-machine
SLURM cluster for the tests marked `slurm` (scripts/local_slurm.py).

torch and Lightning are imported where they are used, not at the top: `pytest -n` loads this file in
its controller too, before it starts any worker, and that import alone is seconds of CPU."""

from __future__ import annotations

import logging
import logging.config
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
# Quiet, CPU-only versions of whatever the test composes, without the model card's CPU speed
# measurement (a second per run; tests/test_model_card.py measures it).
QUIET = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "++measure_cpu_speed=false",
]
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip on a machine without CUDA (as Lightning's RunIf(min_cuda_gpus=1))."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: make gpu-check on a machine with one")
    for item in gpu_tests:
        item.add_marker(skip)


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


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Runs compute on one thread, in this process and in the ones the tests start. The tests'
    batches are small, so a second thread saves little; and when other work shares the cores, each
    op of two threads waits for the descheduled one (measured on 2 cores under a load of 4 to 7:
    2 epochs of digits in 16 s on one thread, 65 s on two)."""
    import torch

    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp


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


def local_slurm():
    """scripts/local_slurm.py as a module (scripts/ is no package): start(dir), stop(dir)."""
    import importlib.util
    import sys

    if "local_slurm" not in sys.modules:
        spec = importlib.util.spec_from_file_location("local_slurm", REPO / "scripts" / "local_slurm.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["local_slurm"] = module
        spec.loader.exec_module(module)
    return sys.modules["local_slurm"]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A one-machine SLURM cluster (munged, slurmctld, slurmd; node `hostname -s`, partition debug)
    with all its files in a temporary folder, stopped after the session. Yields the environment for
    the client commands and the processes that submit jobs (os.environ with SLURM_CONF). Installs
    slurm-wlm and munge with apt-get when they are missing and the tests run as root; skips otherwise."""
    cluster = local_slurm()
    missing = cluster.missing_binaries()
    if missing and not cluster.can_install():
        pytest.skip(f"no SLURM here ({', '.join(missing)} missing): apt-get install slurm-wlm munge as root")
    folder = tmp_path_factory.mktemp("slurm")
    try:
        variables = cluster.start(folder)
    except cluster.ClusterError as e:
        pytest.fail(f"the local SLURM cluster did not start: {e}", pytrace=False)
    try:
        yield {**os.environ, **variables}
    finally:
        cluster.stop(folder)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """The default `python train.py` (digits, scratch_cnn, 10 epochs): run directory and metrics."""
    from classifier.tasks.train import train

    output_dir = tmp_path_factory.mktemp("digits_run")
    cfg = compose_config("train", output_dir)
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    return output_dir, metrics


@pytest.fixture(scope="session")
def small_digits_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """A cheap trained run for the fast tests: digits, a narrow scratch_cnn, one epoch of 10 batches,
    evaluated on the whole val and test splits, no logger. Run directory and metrics."""
    from classifier.tasks.train import train

    output_dir = tmp_path_factory.mktemp("small_digits_run")
    cfg = compose_config(
        "train",
        output_dir,
        # lr 1e-2: predictions spread over the classes already (top-1 ~0.2, top-5 ~0.87)
        [
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=10",
            "optimizer.lr=1e-2",
            "model.width=8",
            "logger=none",
        ],
    )
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    return output_dir, metrics


# Add to a run's overrides to record it in a BatchRecorder (see the `recorders` fixture).
RECORD = "+callbacks.record._target_=conftest.BatchRecorder"


def batch_recorder_class() -> type:
    """BatchRecorder, defined on first use (Lightning imported then, see the module's docstring)."""
    if "BatchRecorder" in globals():
        return globals()["BatchRecorder"]
    import lightning as L
    import torch

    class BatchRecorder(L.Callback):
        """What a run did, batch by batch: for each split, (epoch, batch index, labels, sum of the
        pixels) of every batch outside the sanity check; the train loss of every epoch; its Trainer.
        Instantiated by Hydra from the run's config (RECORD), so the test finds it in `made`."""

        made: list[BatchRecorder] = []

        def __init__(self) -> None:
            self.batches: dict[str, list[tuple]] = {"train": [], "val": [], "test": []}
            self.train_loss: list[float] = []
            # whether autograd's anomaly mode was on, per train batch
            self.anomaly_detection: set[bool] = set()
            self.trainer: L.Trainer | None = None
            BatchRecorder.made.append(self)

        def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
            self.trainer = trainer

        def _record(self, split: str, trainer: L.Trainer, batch, batch_idx: int) -> None:
            if trainer.sanity_checking:
                return
            images, labels = batch[0], batch[1]  # Mixup/CutMix append soft targets
            entry = (trainer.current_epoch, batch_idx, labels.tolist(), images.double().sum().item())
            self.batches[split].append(entry)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._record("train", trainer, batch, batch_idx)
            self.anomaly_detection.add(torch.is_anomaly_enabled())

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            self._record("val", trainer, batch, batch_idx)

        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            self._record("test", trainer, batch, batch_idx)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.train_loss.append(float(trainer.callback_metrics["train/loss"]))

    globals()["BatchRecorder"] = BatchRecorder
    return BatchRecorder


def __getattr__(name: str):
    # `from conftest import BatchRecorder` and Hydra's _target_=conftest.BatchRecorder end here (PEP 562).
    if name == "BatchRecorder":
        return batch_recorder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@pytest.fixture
def recorders() -> Iterator[list]:
    """The BatchRecorders made by the runs of this test that had RECORD among their overrides, in order."""
    recorder = batch_recorder_class()
    recorder.made = []
    yield recorder.made
    recorder.made = []


def recomputed_metrics(ckpt_path: Path) -> dict[str, float]:
    """top1, top5 (5+ classes) and loss of a checkpoint on every held-out split, computed here in
    plain torch over the whole split: what metrics.json should say, by other code than the run's."""
    import torch
    import torch.nn.functional as F

    module, datamodule = load_run(str(ckpt_path))
    module.eval()
    metrics = {}
    for split in ("val", "test") if datamodule.has_test else ("val",):
        loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
        with torch.no_grad():
            outputs = [(module(images), labels) for images, labels in loader]
        logits = torch.cat([logits for logits, _ in outputs])
        labels = torch.cat([labels for _, labels in outputs])
        metrics[f"{split}/top1"] = (logits.argmax(dim=1) == labels).double().mean().item()
        if logits.shape[1] >= 5:
            top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1)
            metrics[f"{split}/top5"] = top5.double().mean().item()
        metrics[f"{split}/loss"] = F.cross_entropy(logits, labels).item()
        metrics[f"{split}/nll"] = F.cross_entropy(logits / module.temperature, labels).item()
    return metrics


@contextmanager
def hydra_job_logging(cfg: DictConfig) -> Iterator[Path]:
    """The logging `python train.py` runs under: cfg.hydra.job_logging (levels per library, a log
    file in the run directory), with Lightning's loggers sent on to it as classifier.cli does.
    Yields the log file's path; everything is restored afterwards."""
    from classifier.cli import _send_lightning_logs_to_hydra

    job_logging = OmegaConf.to_container(cfg.hydra.job_logging, resolve=True)
    root = logging.getLogger()
    saved = {
        name: (logger.handlers[:], logger.level, logger.propagate)
        for name in ("", "classifier", "lightning", "lightning.pytorch", "lightning.fabric")
        for logger in [logging.getLogger(name)]
    }
    Path(cfg.hydra.runtime.output_dir).mkdir(parents=True, exist_ok=True)
    try:
        logging.config.dictConfig(job_logging)
        _send_lightning_logs_to_hydra()
        yield Path(job_logging["handlers"]["file"]["filename"])
    finally:
        for handler in root.handlers:
            handler.close()
        for name, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


def ready(datamodule):
    """A data module after its explicit steps (fetch files, read them), as build_datamodule does."""
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def schedule_trainer(total_steps: int, batches_per_epoch: int, max_epochs: int):
    """What configure_optimizers reads of the trainer, to build a run's schedule without one."""
    from types import SimpleNamespace

    return SimpleNamespace(
        estimated_stepping_batches=total_steps,
        num_training_batches=batches_per_epoch,
        accumulate_grad_batches=1,
        max_epochs=max_epochs,
        max_steps=-1,
    )


def load_run(ckpt_path: str, data_overrides: dict | None = None):
    """The module and data module of a train.py checkpoint, as eval.py rebuilds them."""
    from classifier.engine.from_checkpoint import load_model, saved_datamodule

    saved = load_model(ckpt_path)
    return saved.module, saved_datamodule(saved, data_overrides)
