"""prune_l1 over the torchvision model zoo (slow): channels at amount 0.5, and exact sparsity."""

from __future__ import annotations

import io
import logging

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

from optkit.measure.flops import count_macs
from optkit.measure.params import count_params
from optkit.models.classifier_head import find_classifier
from optkit.passes import PassContext
from optkit_plugins.prune_l1 import PruneL1

pytestmark = pytest.mark.slow

#: The models issue 6 names, with the smallest MACs and params reduction each must reach at 0.5.
NAMED = {
    "resnet18": 3.5, "resnet50": 3.5, "mobilenet_v2": 3.0, "mobilenet_v3_large": 3.0,
    "efficientnet_b0": 3.0, "densenet121": 3.5, "regnet_y_400mf": 3.0, "vgg16_bn": 3.5,
}
#: Models no issue names: they must prune without error (shuffles and the like left alone).
OTHERS = ["shufflenet_v2_x0_5", "squeezenet1_0", "mnasnet0_5", "resnext50_32x4d", "mobilenet_v3_small", "convnext_tiny"]


def _ctx(tmp_path) -> PassContext:
    inputs = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return PassContext(torch.device("cpu"), inputs, tmp_path, logging.getLogger("test.prune_l1_zoo"))


def _onnx_outputs(model: nn.Module, inputs: torch.Tensor, dynamo: bool) -> torch.Tensor:
    buffer = io.BytesIO()
    torch.onnx.export(model, (inputs,), buffer, dynamo=dynamo)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
    return torch.from_numpy(np.asarray(result))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_channel_pruning_of_named_models(tmp_path):
    failures = []
    for name, min_ratio in NAMED.items():
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        ctx = _ctx(tmp_path)
        pruned = PruneL1(PruneL1.Options(mode="channels", amount=0.5)).apply(model, ctx)
        x = ctx.example_input
        with torch.no_grad():
            out, ref = pruned(x), model(x)
        macs = count_macs(model, x)["macs"] / count_macs(pruned, x)["macs"]
        params = count_params(model)["params"] / count_params(pruned)["params"]
        if out.shape != ref.shape or macs < min_ratio or params < min_ratio - 0.5:
            failures.append(f"{name}: shape {tuple(out.shape)}, MACs {macs:.2f}x, params {params:.2f}x")
            continue
        buffer = io.BytesIO()
        torch.save(pruned, buffer)
        buffer.seek(0)
        with torch.no_grad():
            torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), out, atol=0, rtol=0)
        # The TorchScript exporter cannot export VGG's 2x2 -> 7x7 adaptive pooling (at 64x64);
        # the torch.export-based one can, and is covered here once.
        torch.testing.assert_close(_onnx_outputs(pruned, x, dynamo=name == "vgg16_bn"), out, atol=1e-3, rtol=1e-3)
    assert not failures, failures


def test_channel_pruning_of_other_models(tmp_path):
    for name in OTHERS:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        ctx = _ctx(tmp_path)
        pruned = PruneL1(PruneL1.Options(mode="channels", amount=0.5, round_to=4)).apply(model, ctx)
        with torch.no_grad():
            assert pruned(ctx.example_input).shape == model(ctx.example_input).shape, name
        assert count_params(pruned)["params"] <= count_params(model)["params"], name
        # Whatever was left alone is named with a reason.
        assert all(f["layers"] and f["reason"] for f in ctx.details["left_alone"]), name
        if name == "shufflenet_v2_x0_5":
            assert any("view" in f["reason"] for f in ctx.details["left_alone"])


def test_unstructured_sparsity_is_exact_across_models(tmp_path):
    for name in ["resnet50", "mobilenet_v3_large", "efficientnet_b0", "densenet121", "regnet_y_400mf"]:
        for scope, amount in (("global", 0.5), ("layer", 0.7)):
            torch.manual_seed(0)
            model = torchvision.models.get_model(name, weights=None).eval()
            ctx = _ctx(tmp_path)
            pruned = PruneL1(PruneL1.Options(amount=amount, scope=scope)).apply(model, ctx)
            head = find_classifier(pruned)[0]
            layers = [m for n, m in pruned.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n != head]
            zeros = [int((m.weight == 0).sum()) for m in layers]
            if scope == "global":
                assert sum(zeros) == round(amount * sum(m.weight.numel() for m in layers)), name
            else:
                assert zeros == [round(amount * m.weight.numel()) for m in layers], name
            assert torch.equal(pruned.get_submodule(head).weight, model.get_submodule(head).weight), name


#: The models users bring (issue 15), with Torch-Pruning 1.6's MACs reduction at amount 0.5 on
#: the same input (MagnitudePruner, L1, the classifier ignored; benchmarks/prune_channels.py
#: measures it side by side). optkit must reach it within 5%. The ViT is built for 64x64 here,
#: where Torch-Pruning needs help (num_heads) and is not compared: whole heads and MLP halved.
USER_MODELS = {
    "timm:efficientnet_b0": 3.479,
    "timm:regnety_008": 3.903,
    "timm:resnet50d": 3.967,
    "torchvision:convnext_tiny": 3.888,
    "timm:vit_tiny_patch16_224": 3.5,
    "torchvision:googlenet": 3.682,
}


def _user_model(source: str) -> nn.Module:
    import timm

    scheme, name = source.split(":")
    torch.manual_seed(0)
    if scheme == "timm":
        kwargs = {"img_size": 64} if name.startswith("vit") else {}
        return timm.create_model(name, pretrained=False, **kwargs).eval()
    kwargs = {"aux_logits": True, "init_weights": False} if name == "googlenet" else {}
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("source", USER_MODELS)
def test_channel_pruning_of_the_models_users_bring(tmp_path, source):
    from structural_checks import assert_sound

    from optkit.host.facade import Host

    model = _user_model(source)
    ctx = PassContext(torch.device("cpu"), _ctx(tmp_path).example_input, tmp_path, logging.getLogger("test.zoo"),
                      module_rules=Host().rule_table())
    x = ctx.example_input
    pruned = PruneL1(PruneL1.Options(mode="channels", amount=0.5)).apply(model, ctx)
    ratio = count_macs(model, x)["macs"] / count_macs(pruned, x)["macs"]
    assert ratio >= 0.95 * USER_MODELS[source], (source, ratio)
    assert ctx.details["backoffs"] == [] and ctx.details["not_traced"] == []
    if source.endswith("vit_tiny_patch16_224"):
        assert {b.attn.num_heads for b in pruned.blocks} == {1} and ctx.details["rules_used"]
    if source.endswith("googlenet"):  # the auxiliary heads run in training only, and follow the pruned layers
        inception = pruned.inception4a
        widths = [inception.branch1.conv, inception.branch2[1].conv, inception.branch3[1].conv, inception.branch4[1].conv]
        assert pruned.aux1.conv.conv.in_channels == sum(c.out_channels for c in widths)
    assert_sound(model, pruned, x, onnx_dir=tmp_path)
