"""Training recipes: Mixup/CutMix, EMA, frozen and gradually unfrozen backbones, layer-wise lr decay,
class-weighted and soft-target losses, regularisation options, optimisers, schedules, precision."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import timm
import timm.optim
import torch
import torch.nn.functional as F
from conftest import RECORD, REPO, BatchRecorder, load_run, schedule_trainer, write_cifar_batches
from timm.loss import SoftTargetCrossEntropy

from classifier.callbacks.ema import warmup_decay
from classifier.callbacks.finetuning import GradualUnfreeze
from classifier.callbacks.mixing import MixupCutMix
from classifier.engine.build import build_module
from classifier.engine.module import ClassifierModule
from classifier.engine.precision import precision_arguments, resolve_precision
from classifier.errors import UserError
from classifier.models import ScratchCNN, create_model
from classifier.models.structure import backbone_blocks
from classifier.optim.param_groups import apply_lr_scales, param_groups
from classifier.tasks.train import train

SHORT = [
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "data.batch_size=32",
    "model.width=8",
    "logger=csv",
]


# -- Mixup / CutMix ---------------------------------------------------------------------------------
def mix(callback: MixupCutMix, images, labels, epoch: int = 0, max_epochs: int = 10):
    trainer = SimpleNamespace(current_epoch=epoch, max_epochs=max_epochs)
    batch = [images.clone(), labels]
    callback.on_train_epoch_start(trainer, None)
    callback.on_train_batch_start(trainer, None, batch, 0)
    return batch


def kind_of_mix(original: torch.Tensor, mixed: torch.Tensor) -> str:
    """'none', 'cutmix' (every pixel is its own or its partner's: timm pairs i with n-1-i) or 'mixup'."""
    partner = original.flip(0)
    if torch.equal(mixed, original):
        return "none"
    own_or_partner = torch.isclose(mixed, original) | torch.isclose(mixed, partner)
    return "cutmix" if bool(own_or_partner.all()) else "mixup"


def make_callback(num_classes: int = 4, **settings) -> MixupCutMix:
    callback = MixupCutMix(**settings)
    callback.setup(None, SimpleNamespace(class_names=[str(i) for i in range(num_classes)]), "fit")
    return callback


def test_mixup_and_cutmix_happen_with_the_configured_probabilities():
    np.random.seed(0)  # timm's Mixup draws from NumPy's generator (seeded by seed_everything in a run)
    callback = make_callback(prob=0.6, switch_prob=0.25, label_smoothing=0.1, off_epochs=2)
    images = torch.rand(8, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    kinds = []
    for _ in range(400):
        batch = mix(callback, images, labels)
        assert len(batch) == 3
        soft = batch[2]
        assert soft.shape == (8, 4) and torch.allclose(soft.sum(1), torch.ones(8))
        kinds.append(kind_of_mix(images, batch[0]))
        if kinds[-1] != "none":  # a mixed image's target holds both classes
            assert (soft[0, labels[0]] < 0.975 - 1e-6) or torch.isclose(
                soft[0, labels[7]], soft[0, labels[0]]
            )
    mixed = 1 - kinds.count("none") / len(kinds)
    cutmix_share = kinds.count("cutmix") / max(1, len(kinds) - kinds.count("none"))
    assert mixed == pytest.approx(0.6, abs=0.07)
    assert cutmix_share == pytest.approx(0.25, abs=0.08)

    for epoch in (8, 9):  # the last off_epochs=2 of 10: unmixed, targets smoothed one-hot
        batch = mix(callback, images, labels, epoch=epoch)
        assert torch.equal(batch[0], images)
        expected = F.one_hot(labels, 4).float() * 0.9 + 0.1 / 4
        assert torch.allclose(batch[2], expected)


def test_an_odd_batch_keeps_its_last_image_unmixed():
    np.random.seed(1)
    callback = make_callback(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.0)
    images, labels = torch.rand(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0])
    batch = mix(callback, images, labels)
    assert torch.equal(batch[0][4], images[4]) and not torch.equal(batch[0][:4], images[:4])
    assert torch.equal(batch[2][4], F.one_hot(labels[4], 4).float())


def test_soft_targets_train_with_soft_cross_entropy_and_count_top1_on_their_larger_share():
    module = ClassifierModule(ScratchCNN(num_classes=3, width=4), ["a", "b", "c"])
    module.log = lambda *args, **kwargs: None
    images = torch.rand(4, 3, 16, 16)
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.2, 0.8], [0.4, 0.6, 0.0], [0.1, 0.0, 0.9]])
    loss = module.training_step([images, torch.tensor([0, 2, 0, 2]), soft], 0)
    logits = module(images)
    assert loss.item() == pytest.approx(SoftTargetCrossEntropy()(logits, soft).item(), rel=1e-5)
    expected = (logits.argmax(1) == soft.argmax(1)).float().mean()  # image 2: class b, not its label a
    assert module.train_top1.compute().item() == pytest.approx(expected.item())


def test_class_weights_weight_hard_and_soft_losses():
    logits, labels = torch.randn(6, 3), torch.tensor([0, 0, 0, 0, 1, 2])
    weights = [0.5, 2.0, 2.0]
    plain = ClassifierModule(ScratchCNN(num_classes=3, width=4), ["a", "b", "c"])
    weighted = ClassifierModule(ScratchCNN(num_classes=3, width=4), ["a", "b", "c"], class_weights=weights)
    expected = F.cross_entropy(logits, labels, weight=torch.tensor(weights))
    assert weighted.training_loss(logits, labels).item() == pytest.approx(expected.item())
    assert weighted.training_loss(logits, labels).item() != pytest.approx(
        plain.training_loss(logits, labels).item()
    )
    # one-hot soft targets weigh exactly as the hard ones
    one_hot = F.one_hot(labels, 3).float()
    assert weighted.training_loss(logits, one_hot).item() == pytest.approx(expected.item(), rel=1e-5)
    assert "class_weights" not in weighted.state_dict()  # checkpoints load into unweighted modules
    with pytest.raises(UserError, match="data.class_weights has 2 values for 3 classes"):
        ClassifierModule(ScratchCNN(num_classes=3, width=4), ["a", "b", "c"], class_weights=[1, 2])


# -- EMA ----------------------------------------------------------------------------------------------
def test_ema_decay_warms_up_to_its_cap():
    assert warmup_decay(1, 0.9998, 2 / 3) == 0.0  # the first update copies the weights
    assert warmup_decay(28, 0.9998, 2 / 3) == pytest.approx(1 - 28 ** (-2 / 3))
    assert warmup_decay(10**9, 0.9998, 2 / 3) == 0.9998


class EvalWeights(BatchRecorder):
    """Records a weight of the network as each validation epoch starts and ends, and at train batches."""

    def __init__(self) -> None:
        super().__init__()
        self.seen_by_validation: list[torch.Tensor] = []
        self.live: list[torch.Tensor] = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and not trainer.sanity_checking and trainer.state.fn == "fit":
            self.seen_by_validation.append(pl_module.net.head.weight.detach().clone())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.live.append(pl_module.net.head.weight.detach().clone())


@pytest.mark.slow  # three short runs
def test_ema_validates_with_averaged_weights_saves_them_and_resumes_them_exactly(
    compose_train, tmp_path, recorders
):
    same = [
        *SHORT,
        "callbacks=[default,ema,mixup]",
        "callbacks.ema.decay=0.9",
        "scheduler=none",  # a schedule spans the configured run: 1 epoch, then 2, would differ
        "trainer.deterministic=true",
        "+callbacks.record._target_=test_recipes.EvalWeights",
    ]
    train(compose_train(*same, "trainer.max_epochs=2", output_dir=tmp_path / "whole"))
    whole_ckpt = torch.load(tmp_path / "whole/checkpoints/last.ckpt", weights_only=True)
    recorder = recorders[0]
    averaged, live = (
        whole_ckpt["state_dict"]["net.head.weight"],
        whole_ckpt["current_model_state"]["net.head.weight"],
    )
    assert not torch.allclose(averaged, live)
    assert torch.equal(recorder.seen_by_validation[-1], averaged)  # validation ran on the average
    assert torch.equal(recorder.live[-1], live)  # and training on the live weights
    assert whole_ckpt["averaging_state"]["n_averaged"].item() == 6

    train(compose_train(*same, "trainer.max_epochs=1", output_dir=tmp_path / "halves"))
    train(compose_train(*same, "trainer.max_epochs=2", output_dir=tmp_path / "halves"))
    resumed = torch.load(tmp_path / "halves/checkpoints/last.ckpt", weights_only=True)
    for key in ("current_model_state", "averaging_state", "state_dict"):
        for name, value in whole_ckpt[key].items():
            assert torch.equal(value, resumed[key][name]), (
                key,
                name,
                value.flatten()[:3],
                resumed[key][name].flatten()[:3],
            )

    # best.ckpt holds averaged weights, and eval-style loading sees those (not the live ones)

    best = torch.load(tmp_path / "whole/checkpoints/best.ckpt", weights_only=True)
    module, _ = load_run(str(tmp_path / "whole/checkpoints/best.ckpt"))
    assert torch.equal(module.net.head.weight, best["state_dict"]["net.head.weight"])
    assert not torch.equal(
        best["state_dict"]["net.head.weight"], best["current_model_state"]["net.head.weight"]
    )


# -- freezing and unfreezing --------------------------------------------------------------------------
class FrozenState(BatchRecorder):
    """For each training epoch: which backbone blocks take gradients, and which of their batch norms
    are in training mode, as the epoch's first batch starts; and the gradients after its first step."""

    def __init__(self) -> None:
        super().__init__()
        self.trainable_blocks: list[list[bool]] = []
        self.norms_training: list[list[bool]] = []
        self.grads: list[dict[str, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            blocks = backbone_blocks(pl_module.net)
            self.trainable_blocks.append([all(p.requires_grad for p in block) for block in blocks])
            norms = [m for m in pl_module.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            self.norms_training.append([m.training for m in norms])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if len(self.grads) < len(self.trainable_blocks):
            self.grads.append({n: p.grad is not None for n, p in pl_module.net.named_parameters()})


@pytest.mark.slow  # a 1-epoch run and a 3-epoch run
def test_a_frozen_backbone_gets_no_gradient_and_keeps_its_batch_norm_statistics(compose_train, recorders):
    cfg = compose_train(
        *SHORT,
        "trainer.max_epochs=1",
        "model.freeze_backbone=true",
        "logger=none",
        "+callbacks.record._target_=test_recipes.FrozenState",
    )
    from classifier.engine.build import build_datamodule

    datamodule = build_datamodule(cfg.data)
    L.seed_everything(cfg.seed)  # as train() does: the same initial weights
    before = build_module(cfg, datamodule).net.state_dict()
    train(cfg)
    (state,) = recorders
    parameters = [name for name, _ in build_module(cfg, datamodule).net.named_parameters()]
    assert state.grads[0] == {name: name.startswith("head.") for name in parameters}
    assert not any(state.norms_training[0])
    after = torch.load(cfg.paths.output_dir + "/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for name, value in before.items():  # weights, running means and variances, batch counts
        changed = not torch.equal(value, after[f"net.{name}"])
        assert changed == name.startswith("head."), name


def test_unfreezing_schedule_counts_blocks_from_the_top():
    schedule = GradualUnfreeze(start_epoch=2, every_n_epochs=2, blocks_per_step=3)
    assert [schedule.blocks_at(e) for e in range(7)] == [0, 0, 3, 3, 6, 6, 9]
    with pytest.raises(UserError, match="callbacks.unfreeze"):
        GradualUnfreeze(every_n_epochs=0)


@pytest.mark.slow
def test_gradual_unfreezing_trains_the_top_blocks_at_their_epochs(compose_train, recorders):
    cfg = compose_train(
        *SHORT,
        "trainer.max_epochs=3",
        "logger=none",
        "callbacks=[default,unfreeze]",
        "callbacks.unfreeze.blocks_per_step=2",
        "+callbacks.record._target_=test_recipes.FrozenState",
    )
    train(cfg)
    (state,) = recorders
    assert state.trainable_blocks == [
        [False] * 6,
        [False] * 4 + [True] * 2,
        [False] * 2 + [True] * 4,
    ]
    # trainable blocks' batch norms train, frozen ones' stay in eval (1 + 2, then 2 + 1 more norms)
    assert [sum(training) for training in state.norms_training] == [0, 3, 6]
    # parameters with gradients: the head's 2, then blocks of 3 + 6, then of 6 + 3 more
    assert [sum(state.grads[epoch].values()) for epoch in range(3)] == [2, 11, 20]


# -- layer-wise lr decay, optimisers, schedules ----------------------------------------------------------
def lr_of(optimizer, net) -> dict[str, float]:
    names = {id(p): n for n, p in net.named_parameters()}
    return {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}


def test_layer_decay_scales_each_layer_of_a_resnet():
    net = timm.create_model("resnet18", num_classes=3)
    optimizer = torch.optim.AdamW(param_groups(net, layer_decay=0.5), lr=1.0, weight_decay=0.05)
    apply_lr_scales(optimizer)
    lrs = lr_of(optimizer, net)
    # timm's fine groups of resnet18: stem 0, layer1.0 1, layer1.1 2, ..., layer4.1 8, fc 9
    assert lrs["fc.weight"] == 1.0
    assert lrs["layer4.1.conv1.weight"] == 0.5
    assert lrs["layer4.0.conv1.weight"] == 0.25
    assert lrs["layer1.0.conv1.weight"] == 0.5**8
    assert lrs["conv1.weight"] == lrs["bn1.bias"] == 0.5**9
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays[id(net.bn1.bias)] == 0.0 and decays[id(net.conv1.weight)] == 0.05
    with pytest.raises(UserError, match=r"optimizer.layer_decay=1.5 must be in \(0, 1\]"):
        param_groups(net, layer_decay=1.5)


def test_layer_decay_and_backbone_scale_multiply_and_frozen_parameters_are_grouped():
    net = ScratchCNN(num_classes=3, width=4)
    for p in net.features.parameters():
        p.requires_grad_(False)
    groups = param_groups(net, backbone_lr_scale=0.1, layer_decay=0.5)
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale[id(net.head.weight)] == 1.0
    assert scale[id(net.features[0][0].weight)] == pytest.approx(0.1 * 0.5**6)


@pytest.mark.parametrize(
    ("option", "optimizer_type"),
    [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("lion", timm.optim.Lion)],
)
def test_each_optimizer_config_builds_its_optimizer_with_layer_decay(compose_train, option, optimizer_type):
    from classifier.engine.build import build_datamodule

    cfg = compose_train(f"optimizer={option}", "optimizer.layer_decay=0.5", "scheduler=none")
    module = build_module(cfg, build_datamodule(cfg.data))
    module.trainer = SimpleNamespace()
    optimizer = module.configure_optimizers()
    assert type(optimizer) is optimizer_type
    lrs = lr_of(optimizer, module.net)
    assert lrs["head.weight"] == cfg.optimizer.lr
    assert lrs["features.0.0.weight"] == pytest.approx(cfg.optimizer.lr * 0.5**6)


@pytest.mark.parametrize("scheduler", ["onecycle", "step"])
def test_schedules_follow_their_shape(compose_train, scheduler):
    from classifier.engine.build import build_datamodule

    cfg = compose_train(
        f"scheduler={scheduler}", "scheduler.step_epochs=2" if scheduler == "step" else "seed=1"
    )
    module = build_module(cfg, build_datamodule(cfg.data))
    module.trainer = schedule_trainer(100, batches_per_epoch=10, max_epochs=10)
    config = module.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    peak = cfg.optimizer.lr
    if scheduler == "onecycle":
        assert lrs[0] == pytest.approx(peak / 25) and max(lrs) == pytest.approx(peak)
        assert int(np.argmax(lrs)) == 24 and lrs[-1] < peak / 1e4
    else:  # x0.1 every 2 epochs of 10 steps
        assert lrs[0] == lrs[19] == pytest.approx(peak) and lrs[20] == pytest.approx(peak * 0.1)
        assert lrs[99] == pytest.approx(peak * 0.1**4)


# -- regularisation, precision, mechanics -------------------------------------------------------------------
def test_drop_path_and_dropout_reach_timm_models_and_unsupported_ones_fail_in_one_line():
    net = create_model("resnet18", num_classes=3, drop_path_rate=0.2, drop_rate=0.3)
    assert net.drop_rate == 0.3
    rates = [m.drop_prob for m in net.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2)  # stochastic depth grows linearly to the rate
    with pytest.raises(
        UserError, match=r"^model.drop_path_rate is not an option of vgg11 \(it has no stochastic"
    ):
        create_model("vgg11", num_classes=3, drop_path_rate=0.1)
    with pytest.raises(UserError, match="model.drop_path_rate is not an option of scratch_cnn"):
        create_model("scratch_cnn", num_classes=3, drop_path_rate=0.1)


def test_precision_auto_is_bf16_on_new_gpus_16_on_old_ones_and_32_on_cpu(monkeypatch):
    monkeypatch.setattr("classifier.engine.precision.cpu_computes_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("16-mixed", "gpu") == "16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", "auto") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", "gpu") == "16-mixed"
    assert resolve_precision("auto", "cpu") == "32-true"


def test_a_cpu_with_bf16_arithmetic_trains_in_bf16_and_evaluates_in_float32(monkeypatch):
    monkeypatch.setattr("classifier.engine.precision.cpu_computes_bf16", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    arguments = precision_arguments("auto", "auto")
    (plugin,) = arguments["plugins"]
    assert arguments["precision"] is None and plugin.precision == "bf16-mixed"
    net = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with plugin.train_step_context():
        assert net(x).dtype == torch.bfloat16
    for context in (plugin.val_step_context, plugin.test_step_context, plugin.predict_step_context):
        with context():
            assert net(x).dtype == torch.float32
    assert precision_arguments("32-true", "auto") == {"precision": "32-true", "plugins": []}


@pytest.mark.long  # torch.compile's import alone
def test_channels_last_and_compile_switches(compose_train):
    module = ClassifierModule(
        ScratchCNN(num_classes=3, width=4), ["a", "b", "c"], channels_last=True, compile=True
    )
    assert module.net.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert module.net._compiled_call_impl is None
    module.setup("validate")
    assert module.net._compiled_call_impl is None  # compiled for training only
    module.setup("fit")
    assert module.net._compiled_call_impl is not None
    assert list(module.state_dict()) == list(ClassifierModule(ScratchCNN(3, 4), ["a", "b", "c"]).state_dict())


def test_gradient_accumulation_and_clipping_reach_the_trainer(compose_train):
    cfg = compose_train(
        *SHORT,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        "logger=none",
        "trainer.accumulate_grad_batches=2",
        "trainer.gradient_clip_val=0.5",
        "trainer.limit_val_batches=1",
        "callbacks=[]",
        "trainer.enable_checkpointing=false",
    )
    from classifier.engine.build import build_datamodule, build_trainer

    datamodule = build_datamodule(cfg.data)
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg)
    assert trainer.gradient_clip_val == 0.5
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2  # 4 batches, one optimizer step per 2


# -- named experiments ------------------------------------------------------------------------------------
EXPERIMENTS = sorted(path.stem for path in (REPO / "conf" / "experiment").glob("*.yaml"))
LONG_EXPERIMENTS = {"cifar10_resnet18", "cifar10_vit", "deit_finetune", "finetune", "linear_probe"}


@pytest.fixture(scope="module")
def experiment_inputs(tmp_path_factory) -> dict[str, str]:
    """Offline stand-ins for what the recipes fetch: CIFAR-10 batches, and weights files for the
    recipes that start from pretrained models (random weights of the right architecture)."""
    root = tmp_path_factory.mktemp("experiment_inputs")
    write_cifar_batches(root / "cifar", images_per_file=8)
    weights = {}
    for name in ("resnet50", "vit_small_patch16_224"):
        path = root / f"{name}.pth"
        torch.save(timm.create_model(name, num_classes=7).state_dict(), path)
        weights[name] = str(path)
    return {"cifar_root": str(root / "cifar"), **weights}


def test_every_experiment_is_covered():
    assert set(EXPERIMENTS) == {
        "cifar10_resnet18",
        "cifar10_speedrun",
        "cifar10_vit",
        "cnn_vs_vit",
        "deit_finetune",
        "digits_cpu",
        "finetune",
        "linear_probe",
    }


@pytest.mark.parametrize(
    "experiment",  # long: ResNets and ViTs on the CPU; digits_cpu, cifar10_speedrun and cnn_vs_vit stay fast
    [pytest.param(e, marks=pytest.mark.long) if e in LONG_EXPERIMENTS else e for e in EXPERIMENTS],
)
def test_each_experiment_composes_and_runs_a_fast_dev_run(
    compose_train, experiment, experiment_inputs, recorders
):
    cfg = compose_train(f"experiment={experiment}")
    overrides = [
        f"experiment={experiment}",
        "trainer.fast_dev_run=true",
        "data.batch_size=4",
        "logger=none",
        RECORD,
    ]
    if cfg.data._target_.endswith("CIFAR10DataModule"):
        overrides += [f"data.root={experiment_inputs['cifar_root']}", "data.download=false"]
    if cfg.model.get("pretrained"):
        name = cfg.model.name
        overrides += ["model.pretrained=false", f"model.weights={experiment_inputs[name]}"]
    if cfg.data.get("img_size", None) == 224:
        overrides += ["data.img_size=64"]  # the recipe's 224 px on a CPU: slower, not different
    if cfg.module.compile:
        overrides += [
            "module.compile=false"
        ]  # minutes of compiling on a CPU: test_channels_last_and_compile_switches
    train(compose_train(*overrides))
    (recorder,) = recorders
    assert [len(recorder.batches[split]) for split in ("train", "val", "test")] == [1, 1, 1]
    assert np.isfinite(recorder.train_loss).all()


def test_torch_optimizers_take_their_fused_kernel_on_a_gpu_unless_configured(compose_train):
    from classifier.optim.factory import _fused_kernel, _optimizer_class

    on_cpu = torch.nn.Linear(2, 2)
    on_gpu = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device("cuda", 0))]))
    for option, expected in [("adamw", {"fused": True}), ("sgd", {"fused": True}), ("lion", {})]:
        opt_class = _optimizer_class(compose_train(f"optimizer={option}").optimizer.opt)
        assert _fused_kernel(opt_class, on_cpu, {}) == {}  # on the CPU torch picks its own implementation
        assert _fused_kernel(opt_class, on_gpu, {}) == expected, option
    cfg = compose_train("+optimizer.fused=false")
    assert _fused_kernel(_optimizer_class(cfg.optimizer.opt), on_gpu, dict(cfg.optimizer)) == {}
