"""eval.py: rebuilding model and data from a checkpoint's saved config, with data keys overridable; the
figures of the reports (and Grad-CAM's), read from their matplotlib objects."""

from __future__ import annotations

import json
import warnings

import matplotlib
import numpy as np
import pytest
import torch
from conftest import compose_config, write_image_folder
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text
from PIL import Image

from classifier.data.transforms import InputSpec
from classifier.errors import UserError
from classifier.evaluation import fonts
from classifier.evaluation.gradcam import gradcam_figure
from classifier.evaluation.reports import (
    confusion_figure,
    curves_figure,
    reliability_bins,
    reliability_figure,
    save_figure,
)
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


# -- figures a person reads ------------------------------------------------------------------------


def drawn(fig):
    """The figure drawn as a PNG would be, and its renderer."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def texts_outside(fig) -> list[str]:
    """What of `fig`'s text sticks out of it (clipped in the PNG): the figure's texts, and each axes'
    texts, title, legend and axes (their drawn tick labels and label)."""
    renderer = drawn(fig)
    pieces = list(fig.texts)
    for ax in fig.axes:
        pieces += [*ax.texts, ax.title, *([ax.get_legend()] if ax.get_legend() else [])]
        pieces += [ax.xaxis, ax.yaxis] if ax.axison else []
    outside = []
    for piece in pieces:
        box = piece.get_tightbbox(renderer) if piece.get_visible() else None
        if box is not None and (box.x0 < 0 or box.y0 < 0 or box.x1 > fig.bbox.x1 or box.y1 > fig.bbox.y1):
            outside.append(piece.get_text() if isinstance(piece, Text) else str(piece))
    return outside


def test_curves_of_a_one_epoch_run_have_whole_epoch_ticks():
    one = [{"epoch": 1.0, "train/loss": 2.1, "val/loss": 2.3, "train/top1": 0.3, "val/top1": 0.1}]
    many = [{**one[0], "epoch": float(e), "val/loss": 1.1 / e} for e in range(1, 41)]
    for history, first_ticks in ((one, [1.0]), (many, None)):
        fig = curves_figure(history)
        drawn(fig)
        for ax in fig.axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
            if first_ticks is not None:
                assert ticks == first_ticks
        assert texts_outside(fig) == []


@pytest.mark.parametrize(
    "names", [("cat", "dog"), ("cat", "dog", "a rather long class name"), tuple("abcdefghij")]
)
def test_confusion_matrix_numbers_fit_their_cells_and_no_label_is_cut(names):
    n = len(names)
    confusion = np.full((n, n), 3) + np.diag(np.full(n, 120))
    fig = confusion_figure(confusion, names, "val confusion matrix")
    assert texts_outside(fig) == []
    counts, fractions = fig.axes[0], fig.axes[1]  # the colorbars come after the two panels
    cells = [t for t in counts.texts + fractions.texts]
    assert sorted(t.get_text() for t in counts.texts) == sorted(["3"] * (n * n - n) + ["123"] * n)
    sizes = {t.get_fontsize() for t in cells}
    if n == 2:
        assert min(sizes) >= 14  # a 2-class matrix's numbers read from across a room
    renderer = drawn(fig)
    cell_width = counts.get_window_extent(renderer).width / n
    assert all(t.get_window_extent(renderer).width < cell_width for t in cells)


def test_reliability_bars_are_shaded_and_labelled_by_their_image_count():
    confidences = np.concatenate([np.full(99, 0.95), [0.12]])
    correct = np.concatenate([np.ones(90), np.zeros(9), [1]]).astype(bool)  # the lone image is right
    fig = reliability_figure(reliability_bins(confidences, correct, 15), "val reliability")
    accuracy = fig.axes[0]
    bars = sorted(accuracy.patches, key=lambda bar: bar.get_x())
    lone, full = bars[0], bars[-1]
    assert lone.get_height() == 1.0 and full.get_height() == pytest.approx(90 / 99)
    assert lone.get_facecolor()[3] < 0.2 and full.get_facecolor()[3] == pytest.approx(1.0)
    assert sorted(t.get_text() for t in accuracy.texts) == ["1", "99"]
    assert texts_outside(fig) == []


@pytest.mark.parametrize(
    "size, panel", [((32, 32), (224, 224)), ((40, 30), (320, 240)), ((2000, 1500), (1024, 768))]
)
def test_gradcam_pictures_are_readable_and_say_the_prediction(size, panel, tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    cam = np.outer(np.linspace(0, 1, 32), np.ones(32)).astype(np.float32)  # hot at the bottom
    fig = gradcam_figure(image, cam, InputSpec(32), "cat", 0.934)
    assert fig._suptitle.get_text() == "predicted: cat (probability 0.93)"
    assert texts_outside(fig) == []
    save_figure(fig, tmp_path / "cam.png")
    with Image.open(tmp_path / "cam.png") as picture:
        assert picture.width == 2 * panel[0] + 8 and picture.height > panel[1]
        pixels = np.asarray(picture.convert("RGB"))
    left = pixels[-panel[1] :, : panel[0]]  # the image as it was, enlarged or shrunk
    right = pixels[-panel[1] :, -panel[0] :]  # with the heat map over it
    if size == (32, 32):  # enlarged pixel by pixel: each image pixel a 7 x 7 square
        assert np.array_equal(left[::7, ::7], np.asarray(image))
    assert not np.array_equal(left, right)


def test_cjk_names_use_an_installed_font_that_has_them(monkeypatch):
    missing = fonts.characters_without_glyph(["cat", "Ⓐ"])  # in matplotlib's STIX fonts, not in DejaVu Sans
    assert missing == {"Ⓐ"}
    family = fonts.family_with_glyphs(frozenset(missing))
    assert family is not None and not family.startswith(fonts.PLACEHOLDER_FONT)
    with matplotlib.rc_context(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = confusion_figure(np.eye(2, dtype=int), ["cat", "Ⓐ"], "val confusion matrix")
        assert matplotlib.rcParams["font.family"][-1] == family
        drawn(fig)
    assert not [w for w in caught if "missing from font" in str(w.message)]


def test_cjk_names_without_a_font_give_one_warning_and_no_glyph_warnings(monkeypatch, caplog):
    monkeypatch.setattr(fonts, "family_with_glyphs", lambda characters: None)
    monkeypatch.setattr(fonts, "_warned", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # as every validation epoch draws its figures
            drawn(confusion_figure(np.eye(3, dtype=int), ["猫", "犬", "狐狸"], "val confusion matrix"))
    assert not [w for w in caught if "missing from font" in str(w.message)]
    warned = [r for r in caplog.records if r.name == fonts.__name__]
    assert len(warned) == 1 and warned[0].levelname == "WARNING"
    assert "犬狐狸猫" in warned[0].getMessage() and "show them as boxes" in warned[0].getMessage()
