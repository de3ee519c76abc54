"""The optimizer config group builds its optimizer through timm's factory: any timm optimizer by name,
any of its arguments from the config, the project's parameter groups on top."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm.optim
import torch

from classifier.engine.build import build_datamodule, build_module


def built_optimizer(compose_train, *overrides):
    cfg = compose_train("scheduler=none", *overrides)
    module = build_module(cfg, build_datamodule(cfg.data))
    module.trainer = SimpleNamespace()
    return module.configure_optimizers(), module.net


def test_any_timm_optimizer_by_name_with_decay_only_on_weights(compose_train):
    optimizer, net = built_optimizer(compose_train, "optimizer.opt=lamb", "optimizer.lr=0.01")
    assert type(optimizer) is timm.optim.Lamb
    assert {group["lr"] for group in optimizer.param_groups} == {0.01}
    for group in optimizer.param_groups:
        is_weight = {p.ndim > 1 for p in group["params"]}
        assert group["weight_decay"] == (0.05 if is_weight == {True} else 0.0)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(net.parameters()))


def test_an_optimizer_argument_is_one_config_key(compose_train):
    optimizer, _ = built_optimizer(compose_train, "optimizer.eps=1e-6", "optimizer.betas=[0.8,0.9]")
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["eps"] == 1e-6 and optimizer.defaults["betas"] == (0.8, 0.9)


def test_an_adamw_config_switched_to_sgd_drops_the_betas_as_timm_does(compose_train):
    optimizer, _ = built_optimizer(compose_train, "optimizer.opt=sgd", "+optimizer.momentum=0.8")
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] == 0.8
    assert "betas" not in optimizer.defaults


@pytest.mark.parametrize("option", ["adamw", "sgd", "lion"])
def test_the_config_names_what_it_builds(compose_train, option):
    cfg = compose_train(f"optimizer={option}")
    assert cfg.optimizer._target_ == "classifier.optim.factory.create_optimizer"
    assert cfg.optimizer.opt == option
