"""predict.py: predictions that agree with the checkpoint's evaluation, inputs as files, folders and
globs, unreadable files listed, ImageNet names without a checkpoint, Grad-CAM overlays, what the
console shows, and when an existing output file is replaced."""

from __future__ import annotations

import csv
import json
import logging
import os

import numpy as np
import pytest
import timm
import torch
from conftest import compose_config, load_run, write_image_folder
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from classifier.data.transforms import InputSpec, create_eval_transform
from classifier.errors import UserError
from classifier.evaluation.gradcam import crop_box, gradcam_maps, heat_on_image
from classifier.models import create_model
from classifier.tasks.predict import find_images, predict
from classifier.tasks.train import train


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A barely trained scratch_cnn on a generated ImageFolder (3 colour classes, 24 px images, no
    test split): predictions spread over the classes, so a preprocessing slip would change some."""
    root = write_image_folder(tmp_path_factory.mktemp("pets"), {"train": 8, "val": 6})
    run_dir = tmp_path_factory.mktemp("folder_run")
    overrides = [
        "data=imagefolder",
        f"data.root={root}",
        "data.num_workers=0",
        "data.batch_size=8",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "model.width=8",
        "logger=none",
        "measure_cpu_speed=false",
    ]
    metrics = train(compose_config("train", run_dir, overrides))
    GlobalHydra.instance().clear()
    return root, run_dir / "checkpoints" / "best.ckpt", metrics


def run_predict(tmp_path, *overrides):
    return predict(compose_config("predict", tmp_path / "predict", list(overrides), quiet=False))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predictions_on_the_val_folder_are_the_checkpoints_val_evaluation(folder_run, tmp_path):
    root, ckpt, metrics = folder_run
    output = tmp_path / "preds.csv"
    run_predict(tmp_path, f"ckpt_path={ckpt}", f"input={root / 'val'}", f"output={output}", "top_k=2")
    rows = read_csv(output)
    assert len(rows) == 18 and list(rows[0]) == [
        "path",
        "label",
        "prob",
        "top1_label",
        "top1_prob",
        "top2_label",
        "top2_prob",
        "error",
    ]
    right = [row["label"] == row["path"].split("/")[-2] for row in rows]
    assert np.mean(right) == pytest.approx(metrics["val/top1"], abs=1e-6)
    assert 0 < np.mean(right) < 1  # a model that errs: a test of the preprocessing, not of the data
    # image by image, the probabilities the checkpoint's own val loader gives
    module, datamodule = load_run(str(ckpt))
    module.eval()
    with torch.no_grad():
        probabilities = torch.cat([module(x).softmax(1) for x, _ in datamodule.val_dataloader()])
    paths = [path for path, _ in datamodule.dataset("val").samples]
    by_path = {row["path"]: row for row in rows}
    for path, p in zip(paths, probabilities, strict=True):
        row = by_path[path]
        assert float(row["prob"]) == pytest.approx(p.max().item(), abs=1e-5)
        assert row["label"] == module.class_names[p.argmax()]
        assert float(row["top1_prob"]) >= float(row["top2_prob"]) and row["top2_label"] != row["label"]


def test_one_image_prints_its_top_k_classes_with_their_probabilities(
    folder_run, tmp_path, capsys, monkeypatch
):
    root, ckpt, _ = folder_run
    monkeypatch.chdir(root)
    output = tmp_path / "preds.csv"
    run_predict(tmp_path, f"ckpt_path={ckpt}", "input=val/dog/001.jpg", f"output={output}", "top_k=3")
    (row,) = read_csv(output)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "val/dog/001.jpg: top 3 of 3 classes"
    assert lines[1].split() == ["#", "class", "prob"]
    ranked = [line.split() for line in lines[2:5]]
    assert ranked == [[str(i), row[f"top{i}_label"], f"{float(row[f'top{i}_prob']):.4f}"] for i in (1, 2, 3)]
    assert sorted(name for _, name, _ in ranked) == ["cat", "dog", "fox"]
    assert len({len(line) for line in lines[1:5]}) == 1  # aligned: the probabilities end in one column
    assert lines[5:] == [f"written to {output}"]


def test_many_images_print_the_first_ten_and_how_many_more(folder_run, tmp_path, capsys, monkeypatch):
    root, ckpt, _ = folder_run
    monkeypatch.chdir(root)
    output = tmp_path / "preds.json"
    run_predict(tmp_path, f"ckpt_path={ckpt}", "input=val", f"output={output}")
    predictions = json.loads(output.read_text())["predictions"]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["path", "label", "prob"] and len(lines) == 12
    expected = [[os.path.relpath(p["path"], root), p["label"], f"{p['prob']:.4f}"] for p in predictions]
    assert [line.split() for line in lines[1:11]] == expected[:10]
    assert lines[11] == f"... 8 more, all in {output}"  # 18 val images


def test_a_rerun_replaces_its_own_predictions_but_another_file_only_with_overwrite(
    folder_run, tmp_path, caplog
):
    root, ckpt, _ = folder_run
    image = f"input={root / 'val' / 'cat' / '000.png'}"
    for name in ("preds.csv", "preds.json"):
        output = tmp_path / name
        run_predict(tmp_path, f"ckpt_path={ckpt}", image, f"output={output}")
        first = output.read_text()
        output.write_text(first.replace(str(root), "/elsewhere"))  # to see that it is replaced
        with caplog.at_level(logging.WARNING, logger="classifier"):
            run_predict(tmp_path, f"ckpt_path={ckpt}", image, f"output={output}")  # the same command again
        assert output.read_text() == first
        assert f"replacing {output} (predictions written before)" in caplog.messages

    data = tmp_path / "labels.csv"  # a user's own CSV, given as output= by mistake
    data.write_text("path,label\na.jpg,cat\n")
    message = (
        rf"output={data}: {data} exists and is not a predictions file of predict.py; give another file name,"
        " or overwrite=true to replace it"
    )
    with pytest.raises(UserError, match=f"^{message}$"):
        run_predict(tmp_path, f"ckpt_path={ckpt}", image, f"output={data}")
    assert data.read_text() == "path,label\na.jpg,cat\n"
    run_predict(tmp_path, f"ckpt_path={ckpt}", image, f"output={data}", "overwrite=true")
    assert read_csv(data)[0]["path"] == str(root / "val" / "cat" / "000.png")
    (tmp_path / "old.csv").mkdir()
    with pytest.raises(UserError, match=f"output={tmp_path}/old.csv: {tmp_path}/old.csv is a folder"):
        run_predict(tmp_path, f"ckpt_path={ckpt}", image, f"output={tmp_path}/old.csv")


@pytest.mark.long
def test_files_globs_unreadable_images_and_json(folder_run, tmp_path):
    root, ckpt, _ = folder_run
    photos = tmp_path / "photos"
    (photos / "trip" / ".thumbnails").mkdir(parents=True)
    Image.new("RGB", (40, 30), (220, 40, 40)).save(photos / "trip" / "red.jpg")
    Image.new("L", (20, 20), 128).save(photos / "grey.png")
    (photos / "trip" / "broken.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (8, 8)).save(photos / "trip" / ".thumbnails" / "red.jpg")
    (photos / "notes.txt").write_text("not an image")

    assert [p.name for p in find_images(str(photos))] == ["grey.png", "broken.jpg", "red.jpg"]
    assert [p.name for p in find_images(str(photos / "**" / "*.jpg"))] == ["broken.jpg", "red.jpg"]
    assert [p.name for p in find_images(str(photos / "grey.png"))] == ["grey.png"]
    with pytest.raises(UserError, match=r"input=.*\*\.gif matches no image files"):
        find_images(str(photos / "*.gif"))
    with pytest.raises(UserError, match=r"input=.*nowhere does not exist \(looked for "):
        find_images(str(tmp_path / "nowhere"))

    output = tmp_path / "out" / "preds.json"
    run_predict(tmp_path, f"ckpt_path={ckpt}", f"input={photos}", f"output={output}", "top_k=10")
    content = json.loads(output.read_text())
    predicted = {entry["path"].rsplit("/", 1)[-1]: entry for entry in content["predictions"]}
    assert set(predicted) == {"grey.png", "red.jpg"}
    assert [u["path"].rsplit("/", 1)[-1] for u in content["unreadable"]] == ["broken.jpg"]
    red = predicted["red.jpg"]
    assert len(red["top_k"]) == 3  # top_k=10 of 3 classes
    assert sum(t["prob"] for t in red["top_k"]) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(UserError, match="output=.*preds.txt: use a .csv or .json file name"):
        run_predict(tmp_path, f"ckpt_path={ckpt}", f"input={photos}", f"output={tmp_path / 'preds.txt'}")
    with pytest.raises(UserError, match="gradcam='maybe' must be true or false"):
        run_predict(tmp_path, f"ckpt_path={ckpt}", f"input={photos}", "gradcam=maybe")


@pytest.mark.long
def test_no_checkpoint_needs_imagenet_weights_and_names_imagenet_classes(tmp_path):
    from timm.data import ImageNetInfo

    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=1000)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    image = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 260, 3), dtype=np.uint8)).save(image)
    output = tmp_path / "preds.csv"
    run_predict(
        tmp_path,
        "model=resnet18",
        f"model.weights={tmp_path / 'r18.pth'}",
        f"input={image}",
        f"output={output}",
    )
    (row,) = read_csv(output)
    # what the network says, computed here with timm's own eval transform for resnet18's weights
    config = timm.data.resolve_data_config(model=net)
    with torch.no_grad():
        logits = net.eval()(timm.data.create_transform(**config)(Image.open(image).convert("RGB"))[None])
    assert row["label"] == ImageNetInfo().index_to_description(int(logits.argmax()))
    assert float(row["prob"]) == pytest.approx(logits.softmax(1).max().item(), abs=1e-4)

    with pytest.raises(UserError, match="predict.py needs ckpt_path=PATH"):
        run_predict(tmp_path, f"input={image}")
    with pytest.raises(UserError, match="predict.py needs ckpt_path=PATH"):
        run_predict(tmp_path, "model=resnet18", f"input={image}")  # no weights: random outputs
    small = timm.create_model("resnet18", num_classes=10)
    torch.save(small.state_dict(), tmp_path / "r18_10.pth")
    with pytest.raises(UserError, match="has a classification head of another size than resnet18's 1000"):
        run_predict(tmp_path, "model=resnet18", f"model.weights={tmp_path / 'r18_10.pth'}", f"input={image}")


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
def test_the_crop_box_is_where_the_eval_transform_takes_its_pixels(crop_mode):
    # An image whose red channel is its x coordinate and green its y: after the eval transform, the
    # input's corner pixels tell where in the image the model looks.
    width, height = 250, 160
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    spec = InputSpec(224, mean=(0, 0, 0), std=(1, 1, 1), crop_pct=0.875, crop_mode=crop_mode)
    seen = create_eval_transform(spec)(Image.fromarray(pixels)) * 255
    left, top, right, bottom = crop_box((width, height), spec)
    inside = seen.sum(0) > 0  # 'border' pads with zeros
    rows, cols = inside.any(1).nonzero().flatten(), inside.any(0).nonzero().flatten()
    first = seen[:, rows[0], cols[0]]
    last = seen[:, rows[-1], cols[-1]]
    pixel = 224 / (right - left), 224 / (bottom - top)  # input pixels per image pixel
    assert first[0].item() == pytest.approx(max(left, 0), abs=2 + 1 / pixel[0])
    assert first[1].item() == pytest.approx(max(top, 0), abs=2 + 1 / pixel[1])
    assert last[0].item() == pytest.approx(min(right, width) - 1, abs=2 + 1 / pixel[0])
    assert last[1].item() == pytest.approx(min(bottom, height) - 1, abs=2 + 1 / pixel[1])


@pytest.mark.parametrize(
    "name, options", [("scratch_cnn", {}), ("resnet18", {}), ("vit_tiny_patch16_224", {"patch_size": 8})]
)
def test_gradcam_maps_have_the_image_size_and_are_not_constant(name, options):
    torch.manual_seed(0)
    net = create_model(name, num_classes=3, img_size=64, **options).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        predicted = net(images).argmax(1).tolist()  # as predict.py asks: the predicted class's evidence
    maps = gradcam_maps(net, net, images, predicted)
    assert maps.shape == (2, 64, 64)
    assert all(m.std() > 0.01 and m.min() >= 0 and m.max() <= 1 for m in maps)
    assert not np.allclose(maps[0], maps[1])
    spec = InputSpec(64, crop_pct=0.875)
    heat = heat_on_image(maps[0], (120, 90), spec)  # an image of 120 x 90 pixels
    assert heat.shape == (90, 120) and heat.std() > 0.01


@pytest.mark.long
def test_predict_writes_gradcam_pictures_of_a_readable_size(folder_run, tmp_path):
    root, ckpt, _ = folder_run
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, size in enumerate([(40, 30), (24, 24)]):
        pixels = np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"{i}.png")
    output = tmp_path / "preds.csv"
    run_predict(tmp_path, f"ckpt_path={ckpt}", f"input={photos}", f"output={output}", "gradcam=true")
    rows = read_csv(output)
    # the image and its overlay side by side, enlarged 8x and 10x (short side >= 224 px), 8 px apart
    for row, panel in zip(rows, [(320, 240), (240, 240)], strict=True):
        with Image.open(row["gradcam"]) as picture:
            assert picture.width == 2 * panel[0] + 8 and picture.height > panel[1]
