"""Foundation-model workflows, offline, with small randomly initialised models: the feature cache
(written once, reused without running the backbone, rebuilt when the transform or weights change),
k-NN and the linear probe against references, the few-shot subset, CLIP zero-shot with a tiny
open_clip model in a local-dir: folder, and fewshot.py's table."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CONF_DIR, compose_config, write_image_folder
from sklearn.linear_model import LogisticRegression
from torch.utils.data import DataLoader

from classifier.data import DigitsDataModule, ImageFolderDataModule
from classifier.data.loaders import Transformed
from classifier.engine.build import build_datamodule
from classifier.errors import UserError
from classifier.foundation import features as features_module
from classifier.foundation.features import compute_features
from classifier.foundation.probes import fit_linear_probe, fit_logistic_regression, knn_probabilities
from classifier.tasks.probe import probe

PROBE = ["device=cpu", "model=scratch_cnn", "data=digits"]


def clusters(classes: int, per_class: int, dim: int = 16, noise: float = 0.05, seed: int = 0):
    """Features around one random unit direction per class (the same for every seed; separable), and
    their labels; `seed` draws the noise."""
    directions = np.random.default_rng(1234).normal(size=(classes, dim))
    centres = F.normalize(torch.tensor(directions, dtype=torch.float32), dim=1)
    rng = np.random.default_rng(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    x = centres[labels] + noise * torch.tensor(rng.normal(size=(len(labels), dim)), dtype=torch.float32)
    return x, labels


def per_image(datamodule, split: str) -> DataLoader:
    """The split through the data module's eval transform one image at a time: the reference for
    the probe's own (batched, decoded-cache) feature pass."""
    return DataLoader(Transformed(datamodule.dataset(split), datamodule.eval_transform), batch_size=64)


# -- k-NN and the linear probe -----------------------------------------------------------------------
def test_knn_on_separable_features_is_exact_and_weighs_votes_by_similarity():
    train_x, train_y = clusters(10, 30)
    query_x, query_y = clusters(10, 20, seed=1)
    probabilities = knn_probabilities(train_x, train_y, query_x, 10, k=20)
    assert torch.equal(probabilities.argmax(dim=1), query_y)
    # every one of the 20 nearest is of the query's class (30 per class, tight clusters)
    assert torch.allclose(probabilities.gather(1, query_y[:, None]), torch.ones(len(query_y), 1))

    # by hand: neighbours at cosine 1.0 (class 0), 0.8 (class 1), 0.6 (class 1); k=3, T=0.1
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]])
    votes = torch.tensor([np.exp(10.0), np.exp(8.0) + np.exp(6.0), 0.0])
    expected = votes / votes.sum()
    got = knn_probabilities(
        train, torch.tensor([0, 1, 1, 2]), torch.tensor([[2.0, 0.0]]), 3, k=3, temperature=0.1
    )
    assert torch.allclose(got[0], expected.float(), atol=1e-6)


def test_the_linear_probe_solves_scikit_learns_logistic_regression():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(300, 12)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 4, size=300))
    x[:, :4] += 1.5 * F.one_hot(y, 4).float()  # learnable, but not separable
    weight_decay = 1e-2
    x64 = x.double().numpy()  # in float32 scikit-learn too stops ~1e-4 short of the optimum
    reference = LogisticRegression(C=1 / (weight_decay * len(y)), tol=1e-12, max_iter=100_000)
    reference.fit(x64, y.numpy())
    expected = reference.predict_proba(x64)

    def objective(weight, bias) -> float:  # the one both minimise, in float64
        weight, bias = (
            torch.as_tensor(weight, dtype=torch.float64),
            torch.as_tensor(bias, dtype=torch.float64),
        )
        logits = x.double() @ weight.T + bias
        return float(F.cross_entropy(logits, y) + weight_decay / 2 * weight.pow(2).sum())

    optimum = objective(reference.coef_, reference.intercept_)
    # float64: scikit-learn's optimum (to 1e-5 in probabilities with scikit-learn 1.8; 1.1's lbfgs stops
    # 2e-5 short, at a higher objective); float32 (the probe's, twice as fast): within ~1e-4 of it
    for dtype, tolerance in ((torch.float64, 1e-4), (torch.float32, 5e-4)):
        weight, bias = fit_logistic_regression(x, y, 4, weight_decay, max_iter=1000, dtype=dtype)
        ours = F.linear(x.double(), weight.double(), bias.double()).softmax(dim=1).numpy()
        assert np.abs(ours - expected).max() < tolerance, dtype
        assert np.abs(weight.numpy() - reference.coef_).max() < 10 * tolerance, dtype
        assert np.abs(bias.numpy() - reference.intercept_).max() < 10 * tolerance, dtype
        assert objective(weight, bias) <= optimum + (1e-10 if dtype == torch.float64 else 1e-6), dtype


def test_the_probe_keeps_the_strength_with_the_best_val_top1():
    train_x, train_y = clusters(5, 40, noise=0.8)
    val_x, val_y = clusters(5, 40, noise=0.8, seed=1)
    wrap = features_module.SplitFeatures
    fitted, sweep = fit_linear_probe(
        wrap(train_x, train_y, 0.0), wrap(val_x, val_y, 0.0), 5, [10.0, 1e-3, 1e-1]
    )
    assert [s["weight_decay"] for s in sweep] == [10.0, 1e-1, 1e-3]  # strongest first, warm-started
    best = max(sweep, key=lambda s: (s["val_top1"], -s["val_nll"]))
    assert fitted.weight_decay == best["weight_decay"]
    top1 = float((fitted.logits(val_x).argmax(dim=1) == val_y).float().mean())
    assert top1 == pytest.approx(best["val_top1"])


# -- the feature cache -----------------------------------------------------------------------------------
@pytest.fixture
def backbone_calls(monkeypatch) -> list[int]:
    """How many images each backbone pass of the run computed features for."""
    calls: list[int] = []

    def counting(encoder, batches, device):
        calls.append(len(batches.dataset))
        return compute_features(encoder, batches, device)

    monkeypatch.setattr(features_module, "compute_features", counting)
    return calls


def run_probe(tmp_path: Path, name: str, *overrides: str, base: Sequence[str] = PROBE) -> tuple[dict, dict]:
    cfg = compose_config("probe", tmp_path / name, [*base, *overrides], quiet=False)
    metrics = probe(cfg)
    return metrics, json.loads((tmp_path / name / "probe.json").read_text())


@pytest.mark.slow  # make test-slow: eight probe runs
def test_features_are_computed_once_reused_and_rebuilt_when_the_transform_weights_or_files_change(
    tmp_path, backbone_calls
):
    root = write_image_folder(tmp_path / "photos", {"train": 6, "val": 2, "test": 2}, size=16)
    weights = tmp_path / "cnn.pth"
    torch.manual_seed(0)
    from classifier.models import create_model

    torch.save(create_model("scratch_cnn", num_classes=3).state_dict(), weights)
    base = [
        "device=cpu",
        "model=scratch_cnn",
        f"model.weights={weights}",
        "data=imagefolder",
        f"data.root={root}",
    ]

    def run(name: str, *overrides: str) -> tuple[dict, dict]:
        return run_probe(tmp_path, name, "data.num_workers=0", *overrides, base=base)

    first, details = run("a", "method=knn", "knn.k=3")
    assert backbone_calls == [18, 6, 6]  # train, val, test
    assert details["features_from_cache"] == {"train": False, "val": False, "test": False}
    folder = tmp_path / "cache" / "classifier" / "features"
    assert len(list(folder.glob("*.pt"))) == 3

    again, details = run("b", "method=linear")
    assert backbone_calls == [18, 6, 6]  # the backbone did not run again
    assert details["features_from_cache"] == {"train": True, "val": True, "test": True}
    assert details["feature_seconds"]["train"] > 0  # what the cache saved
    knn_again, _ = run("c", "method=knn", "knn.k=3")
    assert knn_again == first  # the same features, the same votes

    run("d", "method=knn", "data.img_size=24")
    assert backbone_calls[3:] == [18, 6, 6]  # another eval transform: new features
    torch.save(create_model("scratch_cnn", num_classes=3).state_dict(), weights)  # other weights
    run("e", "method=knn")
    assert backbone_calls[6:] == [18, 6, 6]
    image = next((root / "test" / "dog").iterdir())
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # a file changed
    run("f", "method=knn")
    assert backbone_calls[9:] == [6]  # that split only
    run("g", "method=knn", "features_cache=false")
    assert backbone_calls[10:] == [18, 6, 6]
    entries = sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime)
    assert len(entries) == 10
    entries[-1].write_bytes(b"not a torch file")  # a damaged entry is computed again, not trusted
    run("h", "method=knn")
    assert backbone_calls[13:] == [6]


@pytest.mark.slow  # make test-slow: two probes and an eval on digits
def test_probe_metrics_are_those_of_the_features_and_the_reports_are_written(tmp_path):
    """metrics.json's k-NN and linear-probe figures, recomputed from features the test computes itself
    through the data module's eval transform."""
    knn, details = run_probe(tmp_path, "knn", "method=knn", "knn.k=5")
    datamodule = build_datamodule(compose_config("probe", tmp_path, PROBE, quiet=False).data)
    torch.manual_seed(42)  # probe.py seeds with seed=42 before building the same random network
    from classifier.foundation.features import PooledFeatures
    from classifier.models import create_model

    encoder = PooledFeatures(create_model("scratch_cnn", num_classes=10))
    cpu = torch.device("cpu")
    feats = {s: compute_features(encoder, per_image(datamodule, s), cpu) for s in ("train", "val", "test")}
    probabilities = knn_probabilities(*feats["train"], feats["test"][0], 10, k=5)
    expected = float((probabilities.argmax(dim=1) == feats["test"][1]).float().mean())
    assert knn["test/top1"] == pytest.approx(expected)
    assert set(knn) == {f"{s}/{m}" for s in ("val", "test") for m in ("top1", "top5", "ece")}
    assert details["images"] == {"train": 1149, "val": 288, "test": 360} and details["k"] == 5
    for name in (
        "metrics.json",
        "report.txt",
        "report.json",
        "confusion_matrix.png",
        "reliability_diagram.png",
    ):
        assert (tmp_path / "knn" / name).is_file()
    report = json.loads((tmp_path / "knn" / "report.json").read_text())
    assert report["split"] == "test" and np.sum(report["confusion"]) == 360

    linear, details = run_probe(tmp_path, "linear", "method=linear", "linear.weight_decay=[1e-2]")
    x, y = feats["train"]
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    reference = LogisticRegression(C=1 / (1e-2 * len(y)), tol=1e-8, max_iter=5000)
    reference.fit(((x - mean) / std).numpy(), y.numpy())
    predicted = reference.predict(((feats["test"][0] - mean) / std).numpy())
    assert abs(linear["test/top1"] - float(np.mean(predicted == feats["test"][1].numpy()))) <= 1 / 360
    assert details["chosen_weight_decay"] == 1e-2 and "test/nll" in linear

    # the backbone with the probe folded into its head, as a train.py checkpoint: eval.py agrees
    from classifier.tasks.evaluate import evaluate

    ckpt = tmp_path / "linear" / "checkpoints" / "best.ckpt"
    evaluated = evaluate(compose_config("eval", tmp_path / "eval", [f"ckpt_path={ckpt}"]))
    for key, value in linear.items():
        assert evaluated[key] == pytest.approx(value, abs=1e-4), key
    assert not (tmp_path / "knn" / "checkpoints").exists()  # a k-NN has no head to save


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=svm"], "method='svm' is not one of linear, knn"),
        (["method=knn", "knn.k=0"], "knn.k=0 must be 1 or more"),
        (["linear.weight_decay=[-1]"], "linear.weight_decay=[-1.0] needs one or more values, none negative"),
    ],
)
def test_probe_settings_are_checked(tmp_path, overrides, message):
    with pytest.raises(UserError) as raised:
        probe(compose_config("probe", tmp_path, [*PROBE, *overrides], quiet=False))
    assert str(raised.value).startswith(message)


def test_foundation_model_configs_take_their_weights_input_settings(compose_train):
    from classifier.engine.build import pretrained_input_overrides

    cfg = compose_train("model=dinov2_s", "data=imagefolder", "data.root=x")
    spec = pretrained_input_overrides(cfg.data, cfg.model)
    assert (
        spec["img_size"] == 224 and spec["interpolation"] == "bicubic"
    )  # the config's data.img_size, not the weights' 518
    cfg = compose_train("model=dinov2_b", "data.img_size=null", "data=imagefolder", "data.root=x")
    assert pretrained_input_overrides(cfg.data, cfg.model)["img_size"] == 518
    cfg = compose_train("model=clip_b16", "data=imagefolder", "data.root=x")
    assert pretrained_input_overrides(cfg.data, cfg.model)["mean"] == [0.48145466, 0.4578275, 0.40821073]
    assert cfg.clip.name == "ViT-B-16"


# -- few-shot subsets -------------------------------------------------------------------------------------
def test_shots_per_class_takes_exactly_k_per_class_stable_for_a_seed_and_nested(tmp_path):
    full = DigitsDataModule()
    full.setup()
    subsets = {}
    for shots, seed in ((3, 0), (3, 0), (5, 0), (3, 1)):
        datamodule = DigitsDataModule(shots_per_class=shots, split_seed=seed)
        datamodule.setup()
        assert datamodule.class_counts().tolist() == [shots] * 10
        assert datamodule.split_sizes() | {"train": 0} == full.split_sizes() | {"train": 0}  # val, test whole
        subsets.setdefault((shots, seed), []).append(set(datamodule.dataset("train").indices))
    assert subsets[(3, 0)][0] == subsets[(3, 0)][1]  # the same seed, the same images
    assert subsets[(3, 0)][0] < subsets[(5, 0)][0]  # 5-shot holds the 3-shot images
    assert subsets[(3, 0)][0] != subsets[(3, 1)][0]

    root = write_image_folder(tmp_path / "photos", {"train": 6, "val": 2}, size=16)
    folder = ImageFolderDataModule(root=str(root), shots_per_class=4, num_workers=0)
    folder.setup()
    assert folder.class_counts().tolist() == [4, 4, 4] and folder.split_sizes()["val"] == 6
    with pytest.raises(
        UserError, match=r"data.shots_per_class=7: the training split has fewer images of cat \(6\)"
    ):
        ImageFolderDataModule(root=str(root), shots_per_class=7, num_workers=0).setup()
    with pytest.raises(UserError, match="data.shots_per_class=0 must be 1 or more"):
        DigitsDataModule(shots_per_class=0)


# -- CLIP zero-shot ----------------------------------------------------------------------------------------
TINY_CLIP = {
    "model_cfg": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"},
}


@pytest.fixture
def tiny_clip(tmp_path) -> Path:
    """A local-dir: folder as open_clip reads one (hub repositories have this layout): its config and
    randomly initialised weights."""
    import open_clip

    folder = tmp_path / "tiny-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(3)
    model = open_clip.create_model(f"local-dir:{folder}")
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def test_zero_shot_averages_one_text_embedding_per_class_and_predicts_the_most_similar(tmp_path, tiny_clip):
    import open_clip

    from classifier.foundation.clip import ImageTower, class_text_embeddings
    from classifier.tasks.zeroshot import zeroshot

    templates = ["a photo of a {}.", "a drawing of the digit {}."]
    cfg = compose_config(
        "zeroshot",
        tmp_path / "run",
        ["device=cpu", f"clip.name=local-dir:{tiny_clip}", f"templates={json.dumps(templates)}"],
        quiet=False,
    )
    metrics = zeroshot(cfg)

    clip = open_clip.create_model(f"local-dir:{tiny_clip}").eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_clip}")
    text = class_text_embeddings(clip, tokenizer, [str(d) for d in range(10)], templates, torch.device("cpu"))
    assert text.shape == (10, 16)
    with torch.no_grad():  # class 7 by hand: the normalised mean of its two prompts' normalised embeddings
        seven = F.normalize(
            clip.encode_text(tokenizer(["a photo of a 7.", "a drawing of the digit 7."])), dim=-1
        )
    assert torch.allclose(text[7], F.normalize(seven.mean(dim=0), dim=0), atol=1e-6)

    datamodule = DigitsDataModule(mean=[0.5] * 3, std=[0.25] * 3, interpolation="bilinear")
    datamodule.setup()
    images, labels = compute_features(ImageTower(clip), per_image(datamodule, "test"), torch.device("cpu"))
    predicted = (F.normalize(images, dim=-1) @ text.T).argmax(dim=1)
    assert metrics["test/top1"] == pytest.approx(float((predicted == labels).float().mean()))
    confusion = np.asarray(json.loads((tmp_path / "run" / "report.json").read_text())["confusion"])
    assert np.array_equal(confusion.sum(axis=0), np.bincount(predicted.numpy(), minlength=10))
    details = json.loads((tmp_path / "run" / "probe.json").read_text())
    assert details["templates"] == templates and details["method"] == "zeroshot"


@pytest.mark.long
def test_zero_shot_mistakes_end_in_one_line(tmp_path):
    from classifier.tasks.zeroshot import zeroshot

    def run(*overrides):
        zeroshot(compose_config("zeroshot", tmp_path, ["device=cpu", *overrides], quiet=False))

    with pytest.raises(UserError, match="model resnet18 has no text tower"):
        run("model=resnet18")
    with pytest.raises(UserError, match=r"templates\[1\]='a photo' needs exactly one \{\}"):
        run('templates=["a {}","a photo"]')
    with pytest.raises(UserError, match="'ViT-B-33' is not an open_clip model; did you mean ViT-B-32"):
        run("clip.name=ViT-B-33")
    with pytest.raises(UserError, match="open_clip has no such weights for ViT-B-32"):
        run("clip.pretrained=laion9b")
    with pytest.raises(UserError, match="class_names has 2 names; the data has 10 classes"):
        run("model.pretrained=false", "class_names=[zero,one]")


# -- fewshot.py ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # make test-slow: six probe and train runs
def test_fewshot_writes_the_table_of_its_runs(tmp_path, caplog):
    """fewshot.py's cells, each a probe.py or train.py run composed inside it as the command line
    composes them (in this process: Hydra's compose API within an initialised config search path)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from classifier.tasks.fewshot import fewshot

    caplog.set_level(logging.INFO, logger="classifier")
    overrides = [
        "model=scratch_cnn",
        "shots=[2,4]",
        "methods=[zeroshot,linear,knn,finetune]",
        'finetune=["trainer.max_epochs=1","trainer.accelerator=cpu","trainer.enable_model_summary=false",'
        '"trainer.enable_progress_bar=false","++measure_cpu_speed=false","callbacks.dashboards=null","logger=none"]',
        "device=cpu",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("fewshot", overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        HydraConfig.instance().set_config(cfg)
        returned = fewshot(cfg)
    run = tmp_path / "run"
    cells = {f"{m}_k{k}" for m in ("linear", "knn", "finetune") for k in (2, 4)}
    assert {p.name for p in run.iterdir() if p.is_dir() and not p.name.startswith(".")} == cells
    table = (run / "fewshot.md").read_text().splitlines()
    assert table[2] == "| method | K=2 | K=4 |"  # no zero-shot column: scratch_cnn has no text tower
    for line in table[4:]:
        method, *values = [cell.strip() for cell in line.strip("|").split("|")]
        for k, value in zip((2, 4), values, strict=True):
            metrics = json.loads((run / f"{method}_k{k}" / "metrics.json").read_text())
            assert value == f"{metrics['test/top1']:.4f}"
    assert json.loads((run / "linear_k2" / "probe.json").read_text())["images"]["train"] == 20
    assert (
        returned["finetune_k4/test/top1"]
        == json.loads((run / "finetune_k4" / "metrics.json").read_text())["test/top1"]
    )
    assert "data: 10 classes; train 40, val 288, test 360 images" in caplog.text
