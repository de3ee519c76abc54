"""Backbones: building by name, local weights with a replaced head, and mistakes."""

from __future__ import annotations

import logging
import socket

import pytest
import timm
import torch

from classifier.errors import UserError
from classifier.models import ScratchCNN, create_model, head_keys


def test_scratch_cnn_handles_any_input_size():
    model = ScratchCNN(num_classes=7).eval()
    for side in (32, 64, 224):
        assert model(torch.randn(2, 3, side, side)).shape == (2, 7)
    assert head_keys(model) == {"head.weight", "head.bias"}


def test_speedrun_cnn_is_airbench94s_layout_with_timms_head_api(tmp_path):
    net = create_model("speedrun_cnn", num_classes=10)
    # airbench94: 2x2 stem to 24 channels, groups of 64/256/256, 3x3 maps at 32 px, no head bias
    assert sum(p.numel() for p in net.parameters()) == 1_972_792
    assert net.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 256, 3, 3)
    assert net.get_classifier().bias is None and net.num_features == 256
    torch.save(net.state_dict(), tmp_path / "speedrun.pth")
    moved = create_model("speedrun_cnn", num_classes=4, weights=str(tmp_path / "speedrun.pth"))
    assert moved(torch.randn(3, 3, 32, 32)).shape == (3, 4)  # the head replaced, the features loaded
    assert torch.equal(moved.features[0].weight, net.features[0].weight)


def test_local_timm_weights_load_and_a_head_of_another_size_is_replaced(tmp_path, caplog):
    source = timm.create_model("resnet18", num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    with caplog.at_level(logging.INFO, logger="classifier"):
        model = create_model("resnet18", num_classes=3, weights=str(tmp_path / "resnet18.pth"))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_mean, source.layer4[1].bn2.running_mean)
    assert model.fc.weight.shape == (3, 512)
    assert any("has 1000 outputs; replaced by a new 3-class head" in r.getMessage() for r in caplog.records)


def test_timm_checkpoint_dict_with_ema_and_ddp_prefixes(tmp_path):
    source = timm.create_model("resnet18", num_classes=5)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save(
        {"state_dict": {k: torch.zeros_like(v) for k, v in state.items()}, "state_dict_ema": state},
        tmp_path / "c.pth",
    )
    model = create_model("resnet18", num_classes=5, weights=str(tmp_path / "c.pth"))
    assert torch.equal(model.fc.weight, source.fc.weight)  # same head size: kept, EMA weights chosen


def test_backbone_saved_inside_another_module_loads(tmp_path):
    source = timm.create_model("resnet18", num_classes=3)
    wrapped = {f"model.{k}": v for k, v in source.state_dict().items()} | {"criterion.weight": torch.ones(3)}
    torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "other_framework.ckpt")
    model = create_model("resnet18", num_classes=3, weights=str(tmp_path / "other_framework.ckpt"))
    assert torch.equal(model.fc.weight, source.fc.weight)


def test_vit_weights_from_224_load_at_32_px(tmp_path):
    source = timm.create_model("vit_small_patch16_224", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    model = create_model(
        "vit_small_patch16_224", num_classes=4, img_size=32, weights=str(tmp_path / "vit.pth")
    )
    assert model.pos_embed.shape[1] == 1 + 4  # class token + 2x2 patches, resampled from 14x14
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_weights_of_another_architecture_are_refused_in_one_line(tmp_path):
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(UserError) as info:
        create_model("resnet50", num_classes=3, weights=str(tmp_path / "r18.pth"))
    message = str(info.value)
    assert "\n" not in message
    assert "does not fit ResNet" in message and "shape mismatch" in message


def test_unreadable_or_missing_weights_name_the_file(tmp_path):
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(UserError, match="model.weights=.*junk.pth is not a readable state_dict"):
        create_model("scratch_cnn", num_classes=3, weights=str(tmp_path / "junk.pth"))
    with pytest.raises(UserError, match="model.weights=.*absent.pth does not exist"):
        create_model("scratch_cnn", num_classes=3, weights=str(tmp_path / "absent.pth"))


def test_unknown_timm_name_suggests_close_ones():
    with pytest.raises(
        UserError,
        match=r"model.name='resnet_18' is neither one of ours \(scratch_cnn, speedrun_cnn\) nor a timm model;"
        r" did you mean .*resnet18",
    ):
        create_model("resnet_18", num_classes=3)


def test_pretrained_offline_fails_fast_in_one_line(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr("classifier.models.factory.hub_reachable", lambda: False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    attempts = []  # the hub client's connections: each one is a minute of retries when offline

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(
        UserError, match="model.pretrained=true could not fetch resnet18 weights .*model.weights=PATH"
    ) as error:
        create_model("resnet18", num_classes=3, pretrained=True)
    assert "\n" not in str(error.value)
    assert attempts == []  # the unreachable hub was not tried: only the local cache was looked in


def test_a_new_head_on_pretrained_features_starts_at_zero(tmp_path):
    source = timm.create_model("efficientnet_b0", num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "b0.pth")
    # timm's own init of a 2-class EfficientNet head is U(-0.7, 0.7): logits in the tens
    replaced = create_model("efficientnet_b0", num_classes=2, weights=str(tmp_path / "b0.pth"))
    assert not replaced.classifier.weight.any() and not replaced.classifier.bias.any()
    kept = create_model("efficientnet_b0", num_classes=1000, weights=str(tmp_path / "b0.pth"))
    assert torch.equal(kept.classifier.weight, source.classifier.weight)
    assert create_model("efficientnet_b0", num_classes=2).classifier.weight.abs().max() > 0.1  # from scratch
