"""experiment=cifar10_speedrun's pieces, each against airbench94's definition of it: the whitening
stem, dirac convs and bias-only batch norms of speedrun_cnn, the 64x batch-norm learning rate with
decoupled weight decay, the triangle schedule, lookahead, and the 2 px shifts."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import ready, schedule_trainer, write_image_folder
from torch import nn
from torchvision.transforms import v2

from classifier.callbacks.ema import Lookahead
from classifier.data import ImageFolderDataModule
from classifier.engine.build import build_module
from classifier.engine.module import ClassifierModule
from classifier.errors import UserError
from classifier.models import create_model
from classifier.models.speedrun_cnn import WHITENING_EPS
from classifier.optim.factory import create_optimizer
from classifier.optim.param_groups import apply_lr_scales, param_groups


def correlated_images(count: int = 64, side: int = 16, seed: int = 0) -> torch.Tensor:
    """Images whose channels and neighbouring pixels are strongly correlated, as photos are."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(count, 1, side, side, generator=generator)
    base = F.avg_pool2d(base, 3, stride=1, padding=1)  # neighbours correlated
    mix = torch.tensor([[1.0], [0.8], [0.5]]).view(1, 3, 1, 1)
    return base * mix + 0.05 * torch.randn(count, 3, side, side, generator=generator)


def patches_of(images: torch.Tensor) -> torch.Tensor:
    return images.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()


def test_the_stem_whitens_the_training_patches_and_is_frozen():
    net = create_model("speedrun_cnn", num_classes=10)
    stem = net.features[0]
    assert not stem.weight.requires_grad and stem.bias.requires_grad
    images = correlated_images()
    net.init_from_images(images[i : i + 16] for i in range(0, 64, 16))  # summed over batches
    patches = patches_of(images)
    covariance = patches.T @ patches / len(patches)
    filters = stem.weight.double().reshape(24, 12)
    assert torch.allclose(filters[12:], -filters[:12])  # each direction and its negative
    whitened = filters[:12] @ covariance @ filters[:12].T
    eigenvalues = torch.linalg.eigvalsh(covariance).flip(0)
    # W C W^T = diag(lambda / (lambda + eps)): the identity for directions well above eps
    assert torch.allclose(whitened, torch.diag(eigenvalues / (eigenvalues + WHITENING_EPS)), atol=1e-5)
    assert whitened.diagonal()[0] == pytest.approx(1.0, abs=1e-3)
    # the outputs are what airbench's get_whitening_parameters gives, up to each filter's sign
    values, vectors = torch.linalg.eigh(covariance)
    theirs = (vectors.T.flip(0) / (values.flip(0)[:, None] + WHITENING_EPS).sqrt()).float()
    ours = filters[:12].float()
    assert torch.allclose((ours * theirs).sum(1).abs(), (theirs * theirs).sum(1), rtol=1e-3)


def test_convs_start_as_identities_and_norms_learn_biases_only():
    net = create_model("speedrun_cnn", num_classes=10)
    first_conv = net.features[2][0]
    x = torch.randn(2, 24, 8, 8)
    assert torch.allclose(first_conv(x)[:, :24], x)  # dirac: the first 24 filters pass x through
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6
    assert all(not n.weight.requires_grad and n.bias.requires_grad and n.eps == 1e-12 for n in norms)
    module = ClassifierModule(net, [str(i) for i in range(10)])
    module.train()
    assert all(n.training for n in norms)  # trainable biases: not held in eval mode as frozen norms are
    plain = create_model("speedrun_cnn", num_classes=10, airbench_init=False)
    assert all(m.weight.requires_grad for m in plain.modules() if isinstance(m, nn.BatchNorm2d))


def test_whitening_runs_before_a_fresh_fit_only(tmp_path):
    root = write_image_folder(tmp_path / "pets", {"train": 6, "val": 2, "test": 2}, size=32)
    datamodule = ready(ImageFolderDataModule(root=str(root), num_workers=0, batch_size=4))
    net = create_model("speedrun_cnn", num_classes=3, width=0.25)
    module = ClassifierModule(net, datamodule.class_names, optimizer=partial(create_optimizer, opt="sgd"))
    random_stem = net.features[0].weight.clone()
    trainer = L.Trainer(
        fast_dev_run=True, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(module, datamodule=datamodule)
    expected = create_model("speedrun_cnn", num_classes=3, width=0.25)
    expected.init_from_images(images for images, _ in datamodule.eval_loader("train"))
    assert torch.allclose(net.features[0].weight, expected.features[0].weight, atol=1e-6)
    assert not torch.allclose(net.features[0].weight, random_stem)
    # resuming (the checkpoint holds the stem) and given weights leave it as it is
    for trainer_state, pretrained in (
        (SimpleNamespace(ckpt_path="last.ckpt", datamodule=datamodule), False),
        (SimpleNamespace(ckpt_path=None, datamodule=datamodule), True),
    ):
        other = ClassifierModule(
            create_model("speedrun_cnn", num_classes=3, width=0.25),
            datamodule.class_names,
            pretrained_backbone=pretrained,
        )
        before = other.net.features[0].weight.clone()
        other.trainer = trainer_state
        other.on_fit_start()
        assert torch.equal(other.net.features[0].weight, before)


def test_norm_lr_scale_and_decayed_biases_are_airbenchs_decoupled_groups():
    net = create_model("speedrun_cnn", num_classes=10)
    optimizer = torch.optim.SGD(
        param_groups(net, norm_lr_scale=64.0, filter_bias_and_bn=False), lr=1.5, weight_decay=1e-3
    )
    apply_lr_scales(optimizer)
    norm_biases = {id(m.bias) for m in net.modules() if isinstance(m, nn.BatchNorm2d)}
    for group in optimizer.param_groups:
        is_norm = {id(p) for p in group["params"]} & norm_biases
        if is_norm:
            assert group["lr"] == pytest.approx(96.0) and group["weight_decay"] == pytest.approx(1e-3 / 64)
        else:  # the stem's bias is decayed too, at the weights' rate
            assert group["lr"] == pytest.approx(1.5) and group["weight_decay"] == pytest.approx(1e-3)
    # the decay per step, lr x weight_decay, is the same for every parameter (airbench's wd)
    assert {round(g["lr"] * g["weight_decay"], 9) for g in optimizer.param_groups} == {0.0015}
    default = torch.optim.SGD(param_groups(net), lr=1.5, weight_decay=1e-3)
    assert {g["lr"] for g in default.param_groups} == {1.5}
    assert any(g["weight_decay"] == 0.0 for g in default.param_groups)  # biases and norms undecayed
    with pytest.raises(UserError, match="optimizer.norm_lr_scale=0.0 must be positive"):
        param_groups(net, norm_lr_scale=0.0)


def airbench_lr_factor(step: int, total: int, lr_peak: float = 0.23, lr_end: float = 0.07) -> float:
    """airbench's get_lr (airbench/utils.py)."""
    warmup = int(total * lr_peak)
    if step < warmup:
        frac = step / warmup
        return 0.2 * (1 - frac) + frac
    frac = (step - warmup) / (total - warmup)
    return (1 - frac) + lr_end * frac


def test_the_speedrun_experiment_trains_with_airbenchs_schedule_and_groups(compose_train):
    cfg = compose_train("experiment=cifar10_speedrun")
    data = SimpleNamespace(
        num_classes=10,
        class_names=list("abcdefghij"),
        loss_class_weights=None,
        input_spec=SimpleNamespace(img_size=32),
    )
    module = build_module(cfg, data)
    total = 470  # 10 epochs of 47 batches of 1,024 of the 49,000 training images
    module.trainer = schedule_trainer(total, batches_per_epoch=47, max_epochs=10)
    config = module.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    weights_group = next(g for g in optimizer.param_groups if g["lr"] == pytest.approx(0.3))
    factors, momenta = [], set()
    for _ in range(total):
        factors.append(weights_group["lr"] / 1.5)
        momenta |= {g["momentum"] for g in optimizer.param_groups}
        optimizer.step()
        schedule.step()
    theirs = [airbench_lr_factor(step, total) for step in range(total)]
    assert max(abs(a - b) for a, b in zip(factors, theirs, strict=True)) < 0.01
    assert factors[-1] == pytest.approx(0.07) and max(factors) == pytest.approx(1.0, abs=1e-3)
    assert momenta == {0.85}  # no momentum cycling
    options = module.optimizer_factory.keywords  # what the optimizer config group builds with
    assert options["norm_lr_scale"] == 64.0 and not options["filter_bias_and_bn"]
    assert cfg.augment.padding == 2 and "lookahead" in cfg.callbacks


def test_lookahead_is_airbenchs_update_and_leaves_the_average_in_the_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    pl_module = SimpleNamespace(net=net)
    trainer = SimpleNamespace(global_step=0, estimated_stepping_batches=12)
    callback = Lookahead(decay=0.9, every_n_steps=5, power=3.0)
    callback.on_fit_start(trainer, pl_module)
    average = {k: v.clone() for k, v in net.state_dict().items() if v.is_floating_point()}
    for step in range(1, 13):
        with torch.no_grad():  # an optimizer step
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(1.0)
        trainer.global_step = step
        live = {k: v for k, v in net.state_dict().items() if v.is_floating_point()}
        if step % 5 == 0:  # airbench: ema.lerp_(net, 1 - 0.9**5 * (step/total)**3); net.copy_(ema)
            decay = 0.9**5 * (step / 12) ** 3
            for key in average:
                average[key] = average[key] + (live[key] - average[key]) * (1 - decay)
            expected_net = average
        elif step == 12:  # the last step: the network becomes the average
            expected_net = average
        else:
            expected_net = {k: v.clone() for k, v in live.items()}
        callback.on_train_batch_end(trainer, pl_module, None, None, step - 1)
        for key, value in net.state_dict().items():
            if value.is_floating_point():
                assert torch.allclose(value, expected_net[key], atol=1e-6), (step, key)
    restored = Lookahead()
    restored.load_state_dict(callback.state_dict())
    assert all(torch.allclose(restored.average[k], average[k]) for k in average)
    with pytest.raises(UserError, match="callbacks.lookahead.every_n_steps=0 must be 1 or more"):
        Lookahead(every_n_steps=0)


def test_augment_padding_sets_the_shift_of_both_paths(tmp_path):
    root = write_image_folder(tmp_path / "pets", {"train": 2, "val": 1, "test": 1}, size=32)

    def module(**augment):
        return ready(ImageFolderDataModule(root=str(root), num_workers=0, augment=augment))

    assert module(padding=2).batch_augment().padding == 2
    assert module().batch_augment().padding == 4  # a side/8
    crops = [t for t in module(padding=2).train_transform.transforms if isinstance(t, v2.RandomCrop)]
    assert [c.padding for c in crops] == [[2, 2, 2, 2]]
    assert module(padding=2, crop=False).batch_augment().padding == 0
    for bad in (0, 1.5):
        with pytest.raises(UserError, match=f"augment.padding={bad} must be a whole number of pixels"):
            module(padding=bad)
