"""MLflow and W&B beside TensorBoard: what a run logs to each (local store and offline mode here; a real
MLflow server in tests/test_tracking_server.py), resumed runs, eval.py and predict.py adding their
results to the training run, and this machine's settings in conf/local/."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from conftest import CONF_DIR, compose_config
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from classifier.run.loggers import run_name_of
from classifier.run.trackers import (
    FINAL_PREFIX,
    TRACKING_FILE,
    flat_params,
    may_receive_results,
    readable_value,
    shortened,
)

# Two short epochs of the default run, on a narrow network.
TINY = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "model.width=8",
]


def test_parameters_are_keyed_as_overrides_with_values_as_a_person_writes_them():
    config = {
        "optimizer": {"lr": 0.001, "betas": [0.9, 0.999]},
        "ckpt_path": None,
        "tta": False,
        "data": {"mean": [0.5, 0.5], "extra": {}},
        "callbacks": {"list": [{"a": 1}]},
    }
    assert flat_params(config) == {
        "optimizer.lr": "0.001",
        "optimizer.betas": "[0.9, 0.999]",
        "ckpt_path": "null",
        "tta": "false",
        "data.mean": "[0.5, 0.5]",
        "data.extra": "{}",
        "callbacks.list": '[{"a": 1}]',
    }
    assert readable_value(True) == "true"
    long = "x" * 7000
    cut = shortened(long, 6000)
    assert len(cut) == 6000 and cut.endswith("... (7000 characters)")
    assert shortened("short", 6000) == "short"


def test_results_go_only_to_a_local_store_or_the_server_this_machine_tracks_to(tmp_path, monkeypatch):
    store = tmp_path / "mlflow.db"
    assert not may_receive_results(f"sqlite:///{store}")  # not there: nothing to attach to
    store.write_bytes(b"")
    assert may_receive_results(f"sqlite:///{store}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert not may_receive_results("http://tracker.example:5000")  # named by a checkpoint from anywhere
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker.example:5000")
    assert may_receive_results("http://tracker.example:5000")


def test_an_unreachable_tracking_server_is_one_line_naming_the_key(compose_train):
    from classifier.engine.build import build_trainer
    from classifier.errors import describe_user_error

    cfg = compose_train("logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:9")
    with pytest.raises(Exception) as caught:  # noqa: PT011  (Hydra wraps it; the CLI prints this line)
        build_trainer(cfg)
    assert describe_user_error(caught.value) == (
        "logger.mlflow.tracking_uri=http://127.0.0.1:9: no MLflow server answers there (cannot connect);"
        " start one (mlflow server --host 127.0.0.1 --port 5000) or correct the address"
    )


def test_several_loggers_at_once_and_the_logger_settings_stay_out_of_run_names(tmp_path):
    overrides = ["logger=[tensorboard,mlflow,wandb]", "seed=3", "logger.mlflow.tracking_uri=http://h:5000"]
    cfg = compose_config("train", tmp_path / "run", overrides, quiet=False)
    assert set(cfg.logger) == {"tensorboard", "mlflow", "wandb"}
    assert run_name_of(tmp_path / "run") == "seed=3"
    compose_config("train", tmp_path / "plain", quiet=False)
    assert run_name_of(tmp_path / "plain") == "plain"  # no overrides: the run directory's name


def test_a_sweeps_runs_are_named_by_what_sets_each_job_apart(tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict, read_write

    sweep = tmp_path / "multirun"
    sweep.mkdir()
    # `python train.py -m seed=1,2 model.width=8 measure_cpu_speed=false logger=mlflow` as Hydra saves it
    typed = ["seed=1,2", "model.width=8", "measure_cpu_speed=false", "logger=mlflow"]
    OmegaConf.save({"hydra": {"overrides": {"task": typed}}}, sweep / "multirun.yaml")
    cfg = compose_config("train", sweep / "1", quiet=False)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(sweep)
        # what the basic sweeper hands job 1: each value again, as Python writes it
        cfg.hydra.overrides.task = ["seed=2", "model.width=8", "measure_cpu_speed=False", "logger=mlflow"]
    HydraConfig.instance().set_config(cfg)
    assert run_name_of(sweep / "1") == "seed=2"


def _mlflow_run(store: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    (run,) = client.search_runs([experiment.experiment_id])
    return client, experiment, run


@pytest.mark.slow  # 25 s on 2 cores: in make test-slow, wandb's offline run stays in make test
def test_a_run_logs_to_a_local_mlflow_store_resumes_into_the_same_run_and_eval_adds_to_it(tmp_path):
    from classifier.tasks.evaluate import evaluate
    from classifier.tasks.predict import predict
    from classifier.tasks.train import train

    run_dir, store_dir = tmp_path / "run", tmp_path / "outputs"
    overrides = ["logger=mlflow", f"paths.log_dir={store_dir}", "seed=5", *TINY]
    first = compose_config("train", run_dir, [*overrides, "trainer.max_epochs=1"])
    train(first)
    GlobalHydra.instance().clear()
    metrics = train(compose_config("train", run_dir, overrides))  # resumes from last.ckpt: epoch 2
    GlobalHydra.instance().clear()

    store = store_dir / "mlflow.db"
    client, experiment, run = _mlflow_run(store)
    assert experiment.name == "train" and run.info.status == "FINISHED"
    assert "seed=5" in run.info.run_name.split(",")  # the overrides it began with
    params = run.data.params
    assert params["seed"] == "5" and params["trainer.max_epochs"] == "1"  # the values it began with
    assert params["model.width"] == "8" and params["data._target_"] == "classifier.data.DigitsDataModule"
    for key in ("val/top1", "val/loss", "train/loss", "train/top1"):
        history = client.get_metric_history(run.info.run_id, key)
        steps = [point.step for point in history]
        assert len(history) == 2 and steps == sorted(set(steps)), (key, steps)  # one point per epoch
    assert "epoch" not in run.data.metrics
    for key, value in metrics.items():
        assert run.data.metrics[FINAL_PREFIX + key] == pytest.approx(value)
    assert run.data.tags["task"] == "train" and run.data.tags["run_dir"] == str(run_dir.resolve())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "confusion_matrix.png", "reliability_diagram.png", "curves.png"} <= artifacts
    assert {"model_card.yaml", "report.json"} <= artifacts and "checkpoints" not in artifacts
    tracking = json.loads((run_dir / TRACKING_FILE).read_text())["mlflow"]
    assert tracking["run_id"] == run.info.run_id and tracking["tracking_uri"] == f"sqlite:///{store}"

    eval_dir = tmp_path / "eval"
    cfg = compose_config("eval", eval_dir, [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"])
    evaluated = evaluate(cfg)
    GlobalHydra.instance().clear()
    run = client.get_run(run.info.run_id)
    assert run.data.metrics["eval/val/top1"] == pytest.approx(evaluated["val/top1"])
    eval_artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval/eval")}
    assert "eval/eval/metrics.json" in eval_artifacts and "eval/eval/confusion_matrix.png" in eval_artifacts

    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):
        Image.new("RGB", (32, 32), (40 * index, 0, 0)).save(images / f"{index}.png")
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    overrides = [f"ckpt_path={ckpt}", f"input={images}"]
    predict(compose_config("predict", tmp_path / "predict", overrides, quiet=False))
    GlobalHydra.instance().clear()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "predict/predict")}
    assert artifacts == {"predict/predict/predictions.csv"}


def read_wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run's .wandb file: a 7-byte header (":W&B", 0xBEE1,
    version), then LevelDB-style log blocks of 32 KiB, each record chunk with a 7-byte header (CRC-32C,
    length, type: 1 full, 2 first, 3 middle, 4 last). wandb 0.31 ships no reader of its own."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    records, chunks, offset, block = [], b"", 7, 32768
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # a block's tail too short for a header is padding
            offset += block - offset % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        if kind == 0 and length == 0:
            break
        chunks += data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def wandb_items(items) -> dict:
    """A W&B record's items as a dict: each item's key, or its nested keys as nested dicts."""
    content: dict = {}
    for item in items:
        *parents, last = [item.key] if item.key else list(item.nested_key)
        node = content
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = json.loads(item.value_json)
    return content


@pytest.mark.long
def test_a_run_logs_to_wandb_offline_into_its_run_directory(tmp_path, monkeypatch):
    from classifier.tasks.train import train

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login: offline
    run_dir = tmp_path / "run"
    metrics = train(compose_config("train", run_dir, ["logger=wandb", "seed=5", *TINY]))
    GlobalHydra.instance().clear()

    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert json.loads((run_dir / TRACKING_FILE).read_text())["wandb"]["dir"] == str(offline)
    records = read_wandb_records(next(offline.glob("run-*.wandb")))
    kinds = [r.WhichOneof("record_type") for r in records]
    config = {k: v for r in records if r.HasField("config") for k, v in wandb_items(r.config.update).items()}
    assert config["seed"] == 5 and config["model.width"] == 8  # W&B keeps the values' JSON types
    assert config["run"]["task"] == "train"
    history = [wandb_items(r.history.item) for r in records if r.HasField("history")]
    val_points = [h for h in history if "val/top1" in h]
    assert len(val_points) == 2  # one per epoch; the final evaluation went to the summary
    summary = {}
    for record in records:
        if record.HasField("summary"):
            summary.update(wandb_items(record.summary.update))
    assert summary[FINAL_PREFIX + "val/top1"] == pytest.approx(metrics["val/top1"])
    files = {name.name for name in (offline / "files").rglob("*") if name.is_file()}
    assert {"metrics.json", "model_card.yaml", "confusion_matrix.png", "report.json"} <= files
    assert any(h.get("confusion_matrix", {}).get("_type") == "image-file" for h in history)
    assert "exit" in kinds  # finished


def test_this_machines_settings_in_conf_local_apply_and_the_command_line_wins(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf, ignore=shutil.ignore_patterns("local"))
    (conf / "local").mkdir()
    (conf / "local" / "default.yaml").write_text(
        "# @package _global_\ndata:\n  batch_size: 7\nlogger:\n  mlflow:\n    tracking_uri: http://h:5000\n"
    )
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        plain = compose("train")
        overrides = ["data.batch_size=9", "logger=mlflow", "experiment=cifar10_resnet18"]
        chosen = compose("train", overrides=overrides)
    assert plain.data.batch_size == 7
    assert chosen.data.batch_size == 9 and chosen.logger.mlflow.tracking_uri == "http://h:5000"
    if not (CONF_DIR / "local" / "default.yaml").exists():  # a clone without settings of its own
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            assert compose("train").data.batch_size == 64
