"""audit.py end to end on generated folders with planted faults (flipped labels, a test image copied
into train, a train image copied), on data held in memory, with a backbone's features, and its
reports as a browser shows them; train.py's data.exclude takes its issues.csv back."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR, compose_config, ready, write_image_folder

from classifier.data import ImageFolderDataModule
from classifier.data.decoded import file_samples
from classifier.errors import UserError
from classifier.models.scratch_cnn import ScratchCNN
from classifier.tasks.audit import audit

CLASSES = ["cat", "dog", "fox"]
FAST = ["folds=3", "probe.weight_decay=[0.01]", "probe.max_iter=100", "device=cpu"]


@pytest.fixture
def planted(tmp_path: Path) -> dict:
    """16 train, 4 val, 6 test images per class; then 3 train labels flipped (files moved to another
    class's folder), test/cat/000.png copied into train (a leak), train/dog/002.png copied (a duplicate)."""
    root = write_image_folder(tmp_path / "pets", {"train": 16, "val": 4, "test": 6}, classes=CLASSES, size=24)
    flips = {"train/cat/004.png": "dog", "train/dog/006.png": "fox", "train/fox/008.png": "cat"}
    flipped = {}
    for path, wrong in flips.items():
        target = root / "train" / wrong / f"flipped_{Path(path).name}"
        (root / path).rename(target)
        flipped[str(target)] = path.split("/")[1]
    leak = root / "train/cat/leak.png"
    shutil.copyfile(root / "test/cat/000.png", leak)
    copy = root / "train/dog/copy.png"
    shutil.copyfile(root / "train/dog/002.png", copy)
    return {
        "root": root,
        "flipped": flipped,
        "leak": (str(leak), str(root / "test/cat/000.png")),
        "duplicate": {str(copy), str(root / "train/dog/002.png")},
    }


def run_audit(tmp_path: Path, *overrides: str) -> tuple[Path, dict]:
    out = tmp_path / "audit"
    metrics = audit(compose_config("audit", out, [*FAST, *overrides], quiet=False))
    return out, metrics


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.mark.long
def test_finds_the_planted_flips_leak_and_duplicate_and_train_takes_the_file_back(tmp_path, planted):
    out, metrics = run_audit(tmp_path, "data=imagefolder", f"data.root={planted['root']}")
    assert metrics["images"] == 16 * 3 + 2 + 12 + 18
    rows = read_rows(out / "issues.csv")
    assert list(rows[0]) == ["path", "issue", "given_label", "suggested_label", "score", "other_path"]
    labels = [row for row in rows if row["issue"] == "label"]
    # every flip, each with its true class suggested, and nothing else (the classes are distinct colours)
    assert {row["path"]: row["suggested_label"] for row in labels} == planted["flipped"]
    assert all(row["given_label"] != row["suggested_label"] for row in labels)
    scores = [float(row["score"]) for row in labels]
    assert scores == sorted(scores) and all(score < 0.5 for score in scores)
    pairs = [row for row in rows if row["issue"] != "label"]
    assert [(row["path"], row["other_path"]) for row in pairs if row["issue"] == "leak"] == [planted["leak"]]
    assert [{row["path"], row["other_path"]} for row in pairs if row["issue"] == "duplicate"] == [
        planted["duplicate"]
    ]
    assert metrics["label_issues"] == 3 and metrics["leaks"] == 1 and metrics["duplicates"] == 1

    report = json.loads((out / "audit.json").read_text())
    assert report["counts"] == {"images": metrics["images"], "label_issues": 3, "duplicates": 1, "leaks": 1}
    assert report["out_of_sample"]["folds"] == 3 and report["out_of_sample"]["out_of_fold_top1"] > 0.9
    assert report["profile"]["splits"]["train"]["per_class"] == {"cat": 17, "dog": 17, "fox": 16}
    first = report["label_issues"][0]
    assert first["p_given"] == pytest.approx(float(labels[0]["score"]), abs=1e-6)  # self-confidence
    markdown = (out / "audit.md").read_text()
    assert "| suspected label errors | 3 |" in markdown and "| leaks (train and val/test) | 1 |" in markdown
    page = (out / "audit.html").read_text()
    assert page.count("class='card label-issue'") == 3 and page.count("pair-card") == 2
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 3 + 2 * 2 + 3  # + 3 profile plots

    # train.py's data.exclude takes the file back: the flips and the train copies go, val/test stay whole
    data = ready(
        ImageFolderDataModule(
            root=str(planted["root"]), batch_size=4, num_workers=0, exclude=str(out / "issues.csv")
        )
    )
    train = {path for path, _ in file_samples(data.dataset("train"))}
    assert not train & set(planted["flipped"]) and planted["leak"][0] not in train
    assert len(planted["duplicate"] & train) == 1
    assert data.split_sizes() == {"train": 16 * 3 + 2 - 3 - 1 - 1, "val": 12, "test": 18}


@pytest.mark.long
def test_data_held_in_memory_is_audited_by_index(tmp_path):
    out, metrics = run_audit(tmp_path, "folds=2", "labels.splits=[test]")
    assert metrics["images"] == 1797
    report = json.loads((out / "audit.json").read_text())
    assert report["split_sizes"] == {"train": 1149, "val": 288, "test": 360}
    assert report["profile"]["splits"]["train"]["modes"] == {"RGB": 1149}
    assert all(re.fullmatch(r"test/\d+", item["path"]) for item in report["label_issues"])
    assert report["out_of_sample"]["features"].startswith("pixels")
    assert report["out_of_sample"]["out_of_fold_top1"] > 0.9
    assert (out / "audit.html").is_file() and (out / "issues.csv").is_file()


@pytest.mark.long
def test_a_backbone_s_features_give_the_probabilities_and_the_cosine_pairs(tmp_path, planted):
    weights = tmp_path / "cnn.pth"
    torch.manual_seed(0)
    torch.save(ScratchCNN(num_classes=3, width=8).state_dict(), weights)
    out, metrics = run_audit(
        tmp_path,
        "data=imagefolder",
        f"data.root={planted['root']}",
        "model=scratch_cnn",
        "model.width=8",
        f"model.weights={weights}",
        "duplicates.min_cosine=0.99999",
    )
    report = json.loads((out / "audit.json").read_text())
    assert report["out_of_sample"]["features"] == f"scratch_cnn (weights: {weights}) features"
    assert report["settings"]["method"] == "probe"
    # the byte copies are found once, by their pixels, not again by their features
    hows = [(pair["issue"], pair["how"]) for pair in report["pairs"]]
    assert hows.count(("leak", "pixels")) == 1 and hows.count(("duplicate", "pixels")) == 1
    assert len({frozenset((p["path"], p["other_path"])) for p in report["pairs"]}) == len(report["pairs"])
    assert metrics["label_issues"] >= 1


@pytest.mark.long
def test_a_cosine_threshold_that_pairs_look_alikes_is_warned_about(tmp_path, planted, caplog):
    weights = tmp_path / "cnn.pth"
    torch.manual_seed(0)
    torch.save(ScratchCNN(num_classes=3, width=8).state_dict(), weights)
    common = ["data=imagefolder", f"data.root={planted['root']}", "model=scratch_cnn", "model.width=8"]
    with caplog.at_level(logging.WARNING, logger="classifier.tasks.audit"):
        out, loose = run_audit(tmp_path, *common, f"model.weights={weights}", "duplicates.min_cosine=0.01")
    warned = [r.getMessage() for r in caplog.records if "features alone" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("duplicates.min_cosine=0.01 found ")
    images = sum(json.loads((out / "audit.json").read_text())["split_sizes"].values())
    assert loose["duplicates"] + loose["leaks"] == images * (images - 1) // 2  # every pair, as asked


@pytest.mark.slow  # 5 trainings: in make test-slow, the probe and pixel audits stay in make test
def test_kfold_training_gives_every_image_an_out_of_fold_probability(tmp_path, planted, caplog):
    """method=kfold: a train.py run per fold, composed inside audit.py as the command line composes it
    (Hydra's compose API within an initialised config search path)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    train = [
        "trainer.max_epochs=8",
        "model.width=8",
        "data.batch_size=8",
        "scheduler=none",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "callbacks.dashboards=null",
    ]
    overrides = [*FAST, "data=imagefolder", f"data.root={planted['root']}", "method=kfold", "folds=2"]
    overrides.append("kfold=[" + ",".join(f'"{o}"' for o in train) + "]")
    out = tmp_path / "audit"
    caplog.set_level(logging.INFO, logger="classifier")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("audit", overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(out)
            cfg.paths.output_dir = str(out)
        HydraConfig.instance().set_config(cfg)
        metrics = audit(cfg)
    report = json.loads((out / "audit.json").read_text())
    oos = report["out_of_sample"]
    assert oos["method"] == "k-fold training" and oos["folds"] == 2 and oos["chosen_weight_decay"] is None
    assert [row["fold"] for row in oos["sweep"]] == [0, 1]
    # each fold is a train.py run of its own, trained on the other fold (data.folds=2 data.fold=i)
    for fold in (0, 1):
        assert f"data.folds=2: fold {fold} of 62 images is val" in caplog.text
        assert (out / "folds" / str(fold) / "checkpoints" / "best.ckpt").is_file()
    assert oos["out_of_fold_top1"] > 0.8  # distinct colours: 8 epochs on 31 images learn them
    flagged = {row["path"] for row in read_rows(out / "issues.csv") if row["issue"] == "label"}
    assert len(flagged & set(planted["flipped"])) >= 2
    assert metrics["leaks"] == 1 and metrics["duplicates"] == 1


def test_bad_settings_are_one_line(tmp_path):
    for overrides, message in (
        (["method=probe"], "method=probe needs a backbone"),
        (["method=knn"], "method='knn' is not one of auto, probe, pixels"),
        (["folds=1"], "folds=1 must be 2 or more"),
        (["labels.rank_by=margin"], "labels.rank_by='margin' is not one of"),
        (["duplicates.min_cosine=1.5"], "duplicates.min_cosine=1.5 must lie in (0, 1]"),
    ):
        with pytest.raises(UserError, match=re.escape(message)):
            run_audit(tmp_path, *overrides)


CHROMIUM = next((p for name in ("chromium", "chromium-browser") if (p := shutil.which(name))), None)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_html_report_renders_every_thumbnail_in_a_browser(tmp_path, planted):
    out, _ = run_audit(tmp_path, "data=imagefolder", f"data.root={planted['root']}")
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    page = f"file://{out / 'audit.html'}"
    dom = subprocess.run(
        [*command, "--virtual-time-budget=10000", "--dump-dom", page],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-images="10"' in body and 'data-images-loaded="10"' in body  # every image decoded
    assert dom.count('class="card label-issue"') == 3
    for path in planted["flipped"]:
        assert path in dom
    assert 'suggested <b class="suggested">dog</b>' in dom  # the cat flipped to dog is suggested back
    screenshot = tmp_path / "audit.png"
    subprocess.run(
        [*command, "--window-size=1300,1600", f"--screenshot={screenshot}", page],
        capture_output=True,
        timeout=120,
    )
    assert screenshot.stat().st_size > 10_000
