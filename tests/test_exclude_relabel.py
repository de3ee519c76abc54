"""data.exclude and data.relabel: an audit's issues.csv applied to the splits of file-backed data, its
paths matched absolute or relative to data.root, stale rows counted, the decoded cache kept apart,
the model card's record, and eval.py of a checkpoint whose issues file is gone."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import yaml
from conftest import compose_config, load_run, ready, write_image_folder

from classifier.audit.issues_file import IssueRow, write_issues
from classifier.data import CSVDataModule, DigitsDataModule, ImageFolderDataModule
from classifier.data.decoded import cache_key, file_samples
from classifier.errors import UserError

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture
def pets(tmp_path: Path) -> Path:
    # 6 train, 2 val, 2 test images per class: 18 / 6 / 6
    return write_image_folder(tmp_path / "pets", {"train": 6, "val": 2, "test": 2}, size=16)


def folder_data(root: Path, **keys) -> ImageFolderDataModule:
    return ready(ImageFolderDataModule(root=str(root), batch_size=4, num_workers=0, img_size=16, **keys))


def paths_of(datamodule, split: str) -> set[str]:
    return {path for path, _ in file_samples(datamodule.dataset(split))}


def duplicate(path: str, other: str) -> IssueRow:
    return IssueRow(path=path, issue="duplicate", score=1.0, other_path=other)


def test_exclude_drops_exactly_the_listed_files_from_every_split(pets, tmp_path, caplog):
    listed = [
        str(pets / "train/cat/000.png"),  # absolute
        "train/dog/001.jpg",  # relative to data.root
        str(pets / "val/fox/000.png"),
        "test/./cat/../cat/001.jpg",  # normalised
    ]
    issues = tmp_path / "issues.csv"
    write_issues([duplicate(path, str(pets / "train/cat/005.jpg")) for path in listed], issues)
    caplog.set_level(logging.INFO, logger="classifier")
    data = folder_data(pets, exclude=str(issues))
    assert data.split_sizes() == {"train": 16, "val": 5, "test": 5}
    dropped = {str(pets / "train/cat/000.png"), str(pets / "train/dog/001.jpg")}
    dropped |= {str(pets / "val/fox/000.png"), str(pets / "test/cat/001.jpg")}
    every = set().union(*(paths_of(data, split) for split in ("train", "val", "test")))
    assert not every & dropped
    assert str(pets / "train/cat/005.jpg") in every  # other_path is kept
    assert len(every) == 26
    assert "data.exclude: 2 of the 18 train images excluded" in caplog.text
    assert "data.exclude: 1 of the 6 val images excluded" in caplog.text
    excluded = data.issues_applied["excluded"]
    assert excluded["images"] == {"train": 2, "val": 1, "test": 1}
    assert excluded["stale_files"] == 0
    assert excluded["sha256"] == hashlib.sha256(issues.read_bytes()).hexdigest()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_relabel_changes_exactly_the_listed_labels_in_train_only(pets, tmp_path, caplog):
    rows = [
        IssueRow("train/cat/002.png", "label", 0.1, "cat", "dog"),
        IssueRow("train/fox/003.jpg", "label", 0.2, "fox", "cat"),
        IssueRow("val/dog/000.png", "label", 0.1, "dog", "fox"),  # val keeps its label
        duplicate("train/dog/000.png", "train/dog/001.jpg"),  # not a label row: relabel ignores it
    ]
    issues = tmp_path / "issues.csv"
    write_issues(rows, issues)
    plain = folder_data(pets)
    caplog.set_level(logging.INFO, logger="classifier")
    data = folder_data(pets, relabel=str(issues))
    before = dict(file_samples(plain.dataset("train")))
    after = dict(file_samples(data.dataset("train")))
    changed = {path: (before[path], label) for path, label in after.items() if before[path] != label}
    assert changed == {str(pets / "train/cat/002.png"): (0, 1), str(pets / "train/fox/003.jpg"): (2, 0)}
    assert file_samples(data.dataset("val")) == file_samples(plain.dataset("val"))
    assert data.split_sizes() == plain.split_sizes()
    assert data.class_counts().tolist() == [6, 7, 5]
    assert data.issues_applied["relabelled"]["images"] == {"train": 2}
    assert "data.relabel: 2 of the 18 train images relabelled" in caplog.text


def test_exclude_and_relabel_together_on_a_csv_with_paths_relative_to_its_folder(tmp_path):
    root = write_image_folder(tmp_path / "imgs", {"a": 4}, classes=("red", "green"), size=16)
    lines = ["path,label,split"]
    lines += [
        f"a/{name}/{i:03d}.{'jpg' if i % 2 else 'png'},{name},train"
        for name in ("red", "green")
        for i in range(4)
    ]
    lines += ["a/red/000.png,red,val", "a/green/001.jpg,green,val"]
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    issues = tmp_path / "issues.csv"
    write_issues([IssueRow("a/red/001.jpg", "label", 0.1, "red", "green")], issues)
    excluded = tmp_path / "excluded.csv"
    write_issues([duplicate(str(root / "a/green/002.png"), str(root / "a/green/003.jpg"))], excluded)
    data = ready(
        CSVDataModule(
            csv=str(root / "list.csv"),
            batch_size=2,
            num_workers=0,
            img_size=16,
            exclude=str(excluded),
            relabel=str(issues),
        )
    )
    train = dict(file_samples(data.dataset("train")))
    assert len(train) == 7 and str(root / "a/green/002.png") not in train
    assert data.class_names == ["green", "red"]
    assert train[str(root / "a/red/001.jpg")] == 0 and train[str(root / "a/red/003.jpg")] == 1
    assert data.issues_applied["excluded"]["images"] == {"train": 1, "val": 0}


def test_files_that_match_no_image_are_counted_in_one_warning(pets, tmp_path, caplog):
    issues = tmp_path / "issues.csv"
    rows = [duplicate("train/cat/000.png", "train/cat/001.jpg")]
    rows += [duplicate(f"elsewhere/{i}.png", "train/cat/001.jpg") for i in range(3)]
    rows += [duplicate("elsewhere/0.png", "train/cat/003.jpg")]  # the same stale file twice: counted once
    write_issues(rows, issues)
    data = folder_data(pets, exclude=str(issues))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"data.exclude={issues}: 3 of the 4 files it lists match no image of the data" in warnings[0]
    assert data.split_sizes()["train"] == 17
    assert data.issues_applied["excluded"]["stale_files"] == 3


def test_a_bad_issues_file_is_one_line_naming_the_file_and_row(pets, tmp_path):
    issues = tmp_path / "issues.csv"
    issues.write_text(
        "path,issue,given_label,suggested_label,score,other_path\n"
        "train/cat/000.png,duplicate,,,1.0,train/cat/001.jpg\n"
        "train/cat/002.png,mislabel,cat,dog,0.2,\n"
    )
    with pytest.raises(UserError, match=f"^{issues} line 3: issue 'mislabel' is not one of") as error:
        folder_data(pets, exclude=str(issues))
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match=f"issues file {tmp_path / 'gone.csv'} does not exist"):
        folder_data(pets, exclude=str(tmp_path / "gone.csv"))
    write_issues([IssueRow("train/cat/002.png", "label", 0.1, "cat", "wolf")], issues)
    with pytest.raises(UserError, match=r"line 2: suggested_label 'wolf' is not one of the data's 3 classes"):
        folder_data(pets, relabel=str(issues))


def test_data_held_in_memory_refuses_the_keys_in_one_line(tmp_path):
    issues = tmp_path / "issues.csv"
    write_issues([duplicate("a.png", "b.png")], issues)
    with pytest.raises(UserError, match=f"^data.exclude={issues}: DigitsDataModule does not read its images"):
        ready(DigitsDataModule(exclude=str(issues)))
    with pytest.raises(UserError, match="data.relabel=3 must be the path of an issues.csv"):
        DigitsDataModule(relabel=3)


def test_the_decoded_cache_of_an_edited_split_is_not_the_unfiltered_ones(pets, tmp_path):
    excluded, relabelled = tmp_path / "excluded.csv", tmp_path / "relabelled.csv"
    write_issues([duplicate("train/cat/000.png", "train/cat/001.jpg")], excluded)
    write_issues([IssueRow("train/cat/002.png", "label", 0.1, "cat", "dog")], relabelled)
    runs = [
        folder_data(pets),
        folder_data(pets, exclude=str(excluded)),
        folder_data(pets, relabel=str(relabelled)),
    ]
    keys = {cache_key(file_samples(data.dataset("train")), data.input_spec) for data in runs}
    assert len(keys) == 3
    arrays = [data.decoded_arrays("train") for data in runs]  # the plain split decoded first, into the cache
    assert [len(labels) for _, labels in arrays] == [18, 17, 18]
    assert arrays[2][1].tolist() == [label for _, label in file_samples(runs[2].dataset("train"))]
    assert arrays[2][1].bincount().tolist() == [5, 7, 6]
    assert len(list((Path(tmp_path) / "cache" / "classifier" / "decoded").glob("*.u8"))) == 3


def test_a_run_records_its_exclusion_and_eval_survives_a_gone_issues_file(pets, tmp_path, caplog):
    issues = tmp_path / "issues.csv"
    rows = [duplicate(f"train/{name}/00{i}.png", f"train/{name}/005.jpg") for name in CLASSES for i in (0, 2)]
    rows.append(IssueRow("test/dog/000.png", "leak", 1.0, other_path="train/dog/003.jpg"))
    write_issues(rows, issues)
    run_dir = tmp_path / "run"
    from classifier.tasks.train import train

    cfg = compose_config(
        "train",
        run_dir,
        [
            "data=imagefolder",
            f"data.root={pets}",
            f"data.exclude={issues}",
            "data.img_size=16",
            "data.batch_size=4",
            "data.num_workers=0",
            "model.width=8",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "logger=none",
        ],
    )
    train(cfg)
    card = yaml.safe_load((run_dir / "model_card.yaml").read_text())["data"]
    assert card["images"] == {"train": 12, "val": 6, "test": 5}
    assert card["excluded"]["images"] == {"train": 6, "val": 0, "test": 1}
    assert card["excluded"]["issues_file"] == str(issues.resolve())
    assert card["excluded"]["sha256"] == hashlib.sha256(issues.read_bytes()).hexdigest()
    assert "relabelled" not in card

    checkpoint = str(run_dir / "checkpoints" / "last.ckpt")
    _, data = load_run(checkpoint)
    assert data.split_sizes() == {"train": 12, "val": 6, "test": 5}
    issues.unlink()
    caplog.clear()
    _, data = load_run(checkpoint)
    assert data.split_sizes() == {"train": 18, "val": 6, "test": 6}
    assert f"the checkpoint's data.exclude={issues} is gone: every split is read whole" in caplog.text
    with pytest.raises(UserError, match="does not exist"):
        load_run(checkpoint, {"exclude": str(issues)})  # named again: an error, not a warning
