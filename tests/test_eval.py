"""eval.py: rebuilding model and data from a checkpoint's saved config, with data keys overridable."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_config, write_image_folder

from classifier.errors import UserError
from classifier.tasks.evaluate import evaluate
from classifier.tasks.train import train


def test_eval_reproduces_the_training_metrics(small_digits_run, tmp_path):
    run_dir, metrics = small_digits_run
    cfg = compose_config(
        "eval", tmp_path, [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", "data.batch_size=100"]
    )
    evaluated = evaluate(cfg)
    assert evaluated.keys() == metrics.keys()
    for key, value in metrics.items():
        assert evaluated[key] == pytest.approx(value, abs=1e-5), key
    assert json.loads((tmp_path / "metrics.json").read_text()) == evaluated
    report = (tmp_path / "report.txt").read_text()
    assert f"checkpoint: {run_dir / 'checkpoints' / 'best.ckpt'}" in report
    assert (tmp_path / "confusion_matrix.png").is_file()


@pytest.mark.long  # a training run first
def test_eval_on_another_folder_and_its_mistakes(compose_train, tmp_path):
    root = write_image_folder(tmp_path / "a", {"train": 8, "val": 3})
    train(
        compose_train(
            "data=imagefolder",
            f"data.root={root}",
            "data.img_size=32",
            "data.num_workers=0",
            "trainer=debug",
            "logger=none",
        )
    )
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    saved = torch.load(ckpt, weights_only=True)["classifier"]
    assert saved["input"]["img_size"] == 32 and saved["config"]["data"]["root"] == str(root)

    other = write_image_folder(tmp_path / "b", {"train": 2, "val": 2, "test": 5}, seed=1)
    metrics = evaluate(compose_config("eval", tmp_path / "eval", [f"ckpt_path={ckpt}", f"data.root={other}"]))
    assert "test/top1" in metrics  # the other folder has a test split
    assert "split: test (15 images)" in (tmp_path / "eval" / "report.txt").read_text()

    wrong = write_image_folder(tmp_path / "c", {"train": 2, "val": 2}, classes=("cat", "cow"))
    with pytest.raises(
        UserError, match=r"the data's classes \(cat, cow\) differ from the checkpoint's \(cat, dog, fox\)"
    ):
        evaluate(compose_config("eval", tmp_path / "e2", [f"ckpt_path={ckpt}", f"data.root={wrong}"]))
    with pytest.raises(
        UserError, match=r"data.csv does not apply to the checkpoint's data \(ImageFolderDataModule\)"
    ):
        evaluate(compose_config("eval", tmp_path / "e3", [f"ckpt_path={ckpt}", "data.csv=x.csv"]))


def test_eval_refuses_files_that_are_not_checkpoints(tmp_path):
    (tmp_path / "x.ckpt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="ckpt_path=.*x.ckpt is not a readable checkpoint"):
        evaluate(compose_config("eval", tmp_path / "e", [f"ckpt_path={tmp_path / 'x.ckpt'}"]))
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(UserError, match="is not a checkpoint written by train.py"):
        evaluate(compose_config("eval", tmp_path / "e", [f"ckpt_path={tmp_path / 'plain.ckpt'}"]))
    with pytest.raises(UserError, match="ckpt_path=.*missing.ckpt does not exist"):
        evaluate(compose_config("eval", tmp_path / "e", [f"ckpt_path={tmp_path / 'missing.ckpt'}"]))
