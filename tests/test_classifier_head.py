"""Classifier-head detection: structural (traced) on real torchvision architectures, with clear errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from optkit.errors import PipelineError
from optkit.models.classifier_head import ClassifierNotFoundError, auxiliary_classifiers, find_classifier
from optkit.models.layers import out_width, replace_module


def small_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10)


def small_swin() -> nn.Module:
    return torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2], num_classes=10)


@pytest.mark.parametrize(
    ("build", "expected", "kind"),
    [
        (lambda: torchvision.models.resnet18(num_classes=10), "fc", nn.Linear),
        (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), "classifier.3", nn.Linear),
        (lambda: torchvision.models.squeezenet1_1(num_classes=10), "classifier.1", nn.Conv2d),
        (lambda: torchvision.models.densenet121(num_classes=10), "classifier", nn.Linear),
        (lambda: torchvision.models.convnext_tiny(num_classes=10), "classifier.2", nn.Linear),
        (small_vit, "heads.head", nn.Linear),
        (small_swin, "head", nn.Linear),
    ],
    ids=["resnet", "mobilenet_v3", "squeezenet", "densenet", "convnext", "vit", "swin"],
)
def test_finds_the_head_of_torchvision_architectures(build, expected, kind):
    model = build()
    name, head = find_classifier(model)
    assert name == expected
    assert isinstance(head, kind)
    assert head is model.get_submodule(expected)
    assert out_width(head) == 10


def test_detection_is_structural_not_by_name():
    class Renamed(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(8, 8)  # a conventional name on a layer that is *not* the head
            self.predictor = nn.Sequential(nn.Dropout(0.1), nn.Linear(8, 4), nn.Identity())

        def forward(self, x):
            return self.predictor(torch.relu(self.fc(self.body(x))))

    assert find_classifier(Renamed())[0] == "predictor.1"


def test_a_layer_mixed_with_something_else_is_not_a_head():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) + x

    with pytest.raises(ClassifierNotFoundError, match=r"fc \(Linear 4->4\)"):
        find_classifier(Residual())


def test_dense_prediction_head_is_refused_naming_candidates():
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
    with pytest.raises(ClassifierNotFoundError) as info:
        find_classifier(model)
    message = str(info.value)
    assert "found no classifier in LRASPP" in message
    assert "classifier.high_classifier (Conv2d 128->5, 1x1)" in message
    assert "layer: dotted.name" in message
    assert isinstance(info.value, PipelineError)


def test_explicit_layer_is_used_and_checked():
    model = torchvision.models.resnet18(num_classes=10)
    assert find_classifier(model, "layer4.1.conv2") == ("layer4.1.conv2", model.layer4[1].conv2)
    with pytest.raises(ClassifierNotFoundError, match=r"ResNet has no layer 'head'; candidate layers .*fc \(Linear 512->10\)"):
        find_classifier(model, "head")
    with pytest.raises(ClassifierNotFoundError, match=r"layer 'bn1' is a BatchNorm2d, not a Linear or convolution layer"):
        find_classifier(model, "bn1")


def test_untraceable_model_falls_back_to_conventional_names():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Linear(4, 6)
            self.classifier = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))

        def forward(self, x):
            if x.sum() > 0:  # value-dependent control flow: torch.fx cannot trace this
                x = -x
            return self.classifier(self.features(x))

    assert find_classifier(DataDependent())[0] == "classifier.2"

    class Anonymous(DataDependent):
        def __init__(self):
            super().__init__()
            self.tail = self.classifier
            del self.classifier

        def forward(self, x):
            if x.sum() > 0:
                x = -x
            return self.tail(self.features(x))

    with pytest.raises(ClassifierNotFoundError, match="torch.fx cannot trace it"):
        find_classifier(Anonymous())


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: torchvision.models.googlenet(num_classes=10, aux_logits=True, init_weights=False), ["aux1.fc2", "aux2.fc2"]),
        (lambda: torchvision.models.inception_v3(num_classes=10, aux_logits=True, init_weights=False), ["AuxLogits.fc"]),
        (lambda: torchvision.models.googlenet(num_classes=10, aux_logits=False, init_weights=False), []),
        (lambda: torchvision.models.resnet18(num_classes=10), []),
    ],
    ids=["googlenet", "inception_v3", "googlenet_no_aux", "resnet"],
)
def test_auxiliary_classifiers(build, expected):
    model = build()
    assert find_classifier(model)[0] == "fc"
    aux = auxiliary_classifiers(model)
    assert [name for name, _ in aux] == expected
    assert all(out_width(head) == 10 for _, head in aux)


def test_detection_leaves_train_and_eval_flags_as_they_were():
    model = torchvision.models.googlenet(num_classes=10, aux_logits=True, init_weights=False).train()
    model.aux1.eval()  # a deliberately mixed state
    flags = {name: m.training for name, m in model.named_modules()}
    find_classifier(model)
    auxiliary_classifiers(model)
    assert {name: m.training for name, m in model.named_modules()} == flags


def test_replace_module_in_nested_sequential():
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    new = nn.Linear(1024, 3)
    old = replace_module(model, "classifier.3", new)
    assert isinstance(old, nn.Linear) and old.out_features == 10
    assert model.classifier[3] is new
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_replace_module_refuses_bad_names():
    model = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(AttributeError, match="cannot replace the model itself"):
        replace_module(model, "", nn.Identity())
    with pytest.raises(AttributeError, match="has no attribute `layer9`"):
        replace_module(model, "layer9.fc", nn.Identity())
