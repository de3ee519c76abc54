"""data=litdata: an ImageFolder converted to LitData chunks streams the same images and labels, trains,
and evaluates from its checkpoint."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from conftest import compose_config, ready, write_image_folder

from classifier.data import ImageFolderDataModule, StreamingDataModule
from classifier.data.streaming import CLASSES_FILE, convert_image_folder
from classifier.errors import UserError
from classifier.tasks.evaluate import evaluate
from classifier.tasks.train import train

pytest.importorskip("litdata")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    source = write_image_folder(tmp_path_factory.mktemp("src"), {"train": 12, "test": 4}, size=24)
    (source / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")  # skipped, as data=imagefolder does
    output = tmp_path_factory.mktemp("chunks")
    info = convert_image_folder(source, str(output), val_split=0.25)
    return source, output, info


def fingerprints(loader) -> Counter:
    """(label, rounded pixel sum) of every image a loader yields."""
    found = Counter()
    for images, labels in loader:
        for image, label in zip(images, labels, strict=True):
            found[(int(label), round(image.double().sum().item(), 2))] += 1
    return found


def test_the_stream_yields_the_folders_images_and_labels(converted):
    source, output, info = converted
    assert info["class_names"] == ["cat", "dog", "fox"] and info["typical_side"] == 24
    assert {split: s["images"] for split, s in info["splits"].items()} == {"train": 27, "val": 9, "test": 12}
    assert json.loads((output / CLASSES_FILE).read_text()) == info
    folder = ready(ImageFolderDataModule(root=str(source), val_split=0.25, num_workers=0, batch_size=8))
    stream = ready(StreamingDataModule(root=str(output), num_workers=0, batch_size=8))
    assert stream.class_names == folder.class_names and stream.input_spec == folder.input_spec
    assert stream.class_counts().tolist() == folder.class_counts().tolist() == [9, 9, 9]
    for split in ("val", "test"):
        expected = fingerprints(folder.val_dataloader() if split == "val" else folder.test_dataloader())
        got = fingerprints(stream.val_dataloader() if split == "val" else stream.test_dataloader())
        assert got == expected and sum(got.values()) == info["splits"][split]["images"]
    # training batches: augmented, so compare labels; every image once per epoch, in a shuffled order
    torch.manual_seed(0)
    loader = stream.train_dataloader()  # as Lightning does: one loader, iterated once per epoch
    epochs = [[int(y) for _, labels in loader for y in labels] for _ in range(2)]
    for epoch in epochs:  # 27 images in full batches of 8: 24 of them, no image twice
        assert len(epoch) == 24 and all(count <= 9 for count in Counter(epoch).values())
    assert epochs[0] != epochs[1]  # a new shuffle each epoch


@pytest.mark.long
def test_a_run_on_the_stream_trains_and_evaluates_from_its_checkpoint(converted, compose_train, tmp_path):
    _, output, _ = converted
    overrides = [
        "data=litdata",
        f"data.root={output}",
        "data.num_workers=0",
        "data.batch_size=8",
        "logger=none",
    ]
    metrics = train(compose_train(*overrides, "trainer.max_epochs=2", "model.width=8"))
    assert set(metrics) >= {"val/top1", "test/top1"}
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    again = evaluate(compose_config("eval", tmp_path / "eval", [f"ckpt_path={best}"]))
    for key, value in metrics.items():
        assert again[key] == pytest.approx(value, abs=1e-5), key
    assert "split: test (12 images)" in (tmp_path / "run" / "report.txt").read_text()


def test_stream_mistakes_are_one_line(tmp_path, converted):
    with pytest.raises(UserError, match=r"classes.json not found: convert the images first \(python -m"):
        ready(StreamingDataModule(root=str(tmp_path / "nothing")))
    streams = "data=litdata streams its images: no data.sampler, data.folds or data.shots_per_class"
    with pytest.raises(UserError, match=streams):
        StreamingDataModule(root=str(converted[1]), sampler="balanced")
