"""The ``reclassify`` pass: new head width, exact logits for kept classes, freezing, clear errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torchvision
from torch import nn

from optkit import PassContext
from optkit.errors import StageError
from optkit.models.classifier_head import auxiliary_classifiers, find_classifier
from optkit.models.layers import out_width
from optkit_plugins.reclassify import Reclassify, new_head

EXACT = {"rtol": 0.0, "atol": 0.0}


def assert_same_logits(after: torch.Tensor, before: torch.Tensor, **kwargs) -> None:
    """The kept rows compute the same dot products as before, but a head of another width runs
    another GEMM shape, which may sum in another order (CPUs differ: AVX2, AVX-512): equal up to
    float32 rounding, relative to the logits' magnitude."""
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5 * float(before.abs().max()), **kwargs)


def apply(model: nn.Module, tmp_path, **options) -> tuple[nn.Module, dict]:
    ctx = PassContext(
        device=torch.device("cpu"), example_input=torch.zeros(1), output_dir=tmp_path, logger=logging.getLogger("test")
    )
    result = Reclassify(Reclassify.Options(**options)).apply(model.eval(), ctx)
    return result, ctx.details


@torch.inference_mode()
def test_new_head_has_num_classes_and_old_in_features(tmp_path):
    model = torchvision.models.resnet18(num_classes=10)
    model, details = apply(model, tmp_path, num_classes=7)
    assert isinstance(model.fc, nn.Linear) and (model.fc.in_features, model.fc.out_features) == (512, 7)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert details["heads"] == [{"layer": "fc", "type": "Linear", "in_features": 512, "old_classes": 10, "new_classes": 7}]
    assert details["trainable_params"] == sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def test_keep_reproduces_the_old_logits(tmp_path):
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    keep = [7, 2, 9]
    model, details = apply(model, tmp_path, keep=keep)
    after = model(x)
    assert after.shape == (2, 3)
    assert_same_logits(after, before[:, keep])
    assert details["keep"] == keep and "the same rows of weights" in details["note"]


@torch.inference_mode()
def test_keep_with_extra_zero_rows(tmp_path):
    model = torchvision.models.squeezenet1_1(num_classes=10).eval()  # the head is a 1x1 convolution
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    model, details = apply(model, tmp_path, num_classes=5, keep=[4, 0], init="zeros")
    after = model(x)
    assert isinstance(model.classifier[1], nn.Conv2d) and model.classifier[1].out_channels == 5
    assert_same_logits(after[:, :2], before[:, [4, 0]])
    # zero weights and bias, then ReLU and pooling: the new classes start at exactly 0
    torch.testing.assert_close(after[:, 2:], torch.zeros(2, 3), **EXACT)
    assert "outputs 2..4 are new (zeros init)" in details["note"]


def test_default_init_is_seeded_and_leaves_the_global_rng_alone():
    old = nn.Linear(8, 10)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        a = new_head(old, 4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        b = new_head(old, 4)
    torch.testing.assert_close(a.weight, b.weight, **EXACT)
    assert torch.equal(torch.get_rng_state(), state)


def test_pass_default_init_is_reproducible(tmp_path):
    first, second = torchvision.models.resnet18(num_classes=10), torchvision.models.resnet18(num_classes=10)
    state = torch.get_rng_state()
    a, _ = apply(first, tmp_path, num_classes=4, seed=3)
    b, _ = apply(second, tmp_path, num_classes=4, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a.fc.weight, b.fc.weight, **EXACT)
    assert a.fc.weight.abs().sum() > 0


def test_freeze_backbone_leaves_only_the_heads_trainable(tmp_path):
    model = torchvision.models.googlenet(num_classes=10, aux_logits=True, init_weights=False)
    model, details = apply(model, tmp_path, num_classes=3, freeze="backbone")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{h}.{p}" for h in ("fc", "aux1.fc2", "aux2.fc2") for p in ("weight", "bias")}
    assert details["trainable_params"] == 1024 * 3 + 3 + 2 * (1024 * 3 + 3)
    assert details["freeze"] == "backbone"


def test_auxiliary_heads_are_replaced_too(tmp_path):
    model = torchvision.models.inception_v3(num_classes=10, aux_logits=True, init_weights=False)
    _, details = apply(model, tmp_path, num_classes=4)
    assert [h["layer"] for h in details["heads"]] == ["fc", "AuxLogits.fc"]
    model = torchvision.models.googlenet(num_classes=10, aux_logits=True, init_weights=False)
    model, details = apply(model, tmp_path, num_classes=4)
    assert [h["layer"] for h in details["heads"]] == ["fc", "aux1.fc2", "aux2.fc2"]
    model.train()  # the auxiliary outputs exist in training mode
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert [tuple(t.shape) for t in out] == [(2, 4)] * 3


def test_aux_false_keeps_auxiliary_heads(tmp_path):
    model = torchvision.models.googlenet(num_classes=10, aux_logits=True, init_weights=False)
    model, details = apply(model, tmp_path, num_classes=4, aux=False)
    assert [h["layer"] for h in details["heads"]] == ["fc"]
    assert model.aux1.fc2.out_features == 10


@torch.inference_mode()
def test_explicit_layer(tmp_path):
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Linear(6, 8)
            self.cls = nn.Linear(8, 5)

        def forward(self, x):
            return self.cls(self.trunk(x)).softmax(1)

    model, details = apply(TwoHeads(), tmp_path, num_classes=2, layer="cls")
    assert model(torch.randn(3, 6)).shape == (3, 2)
    with pytest.raises(StageError, match="TwoHeads has no layer 'head'"):
        apply(TwoHeads(), tmp_path, num_classes=2, layer="head")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "give num_classes, or keep"),
        ({"keep": [1, 1]}, "keep lists a class twice"),
        ({"num_classes": 1, "keep": [1, 2]}, "keep has 2 classes, more than num_classes=1"),
        ({"num_classes": 0}, "greater than 0"),
        ({"num_classes": 2, "init": "ones"}, "'default' or 'zeros'"),
        ({"num_classes": 2, "freeze": "all"}, "'none' or 'backbone'"),
        ({"num_classes": 2, "keep": [-1]}, "greater than or equal to 0"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        Reclassify.Options(**options)


def test_keep_out_of_range_names_the_option_and_the_head(tmp_path):
    with pytest.raises(StageError, match=r"option keep: class index 10 is out of range for head 'fc', which has 10 classes"):
        apply(torchvision.models.resnet18(num_classes=10), tmp_path, keep=[0, 10])


def test_model_without_classifier_fails_naming_candidates(tmp_path):
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
    with pytest.raises(StageError, match=r"candidate layers .*classifier\.high_classifier"):
        apply(model, tmp_path, num_classes=3)


def test_pipeline_reports_head_and_trainable_params(write_pipeline, cli, tmp_path):
    path = write_pipeline(
        f"""
        model:
          source: torchvision:resnet18
          weights: none
          input_shape: [1, 3, 64, 64]
        device: cpu
        measure: {{warmup: 1, iters: 3}}
        passes:
          - reclassify: {{keep: [5, 1], freeze: backbone}}
        output: {tmp_path / "run"}
        """
    )
    result = cli("run", path)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    baseline, stage = report["stages"]
    assert stage["status"] == "ok"
    assert stage["details"]["heads"][0]["layer"] == "fc"
    assert stage["metrics"]["params"] == baseline["metrics"]["params"] - 998 * 513
    assert stage["metrics"]["trainable_params"] == 2 * 513 == stage["details"]["trainable_params"]
    assert stage["metrics"]["drift"]["comparable"] is False  # 1000 logits became 2


def _build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A torchvision classifier, at the smallest input its architecture accepts cheaply."""
    kwargs = {"weights": None}
    size = 32  # CNNs pool adaptively; the big ones (regnet_y_128gf) cost 1/49 of their 224x224 forward
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=True, init_weights=False)
        size = 80 if name == "inception_v3" else 32
    elif name == "alexnet":
        size = 64  # its max-pools need at least 64x64
    elif name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        kwargs["image_size"] = size = 2 * patch  # 2x2 patches: the same layers, a fraction of the compute
    elif name.startswith("maxvit"):
        size = 224  # its partitions fix the input size
    return torchvision.models.get_model(name, **kwargs).eval(), (1, 3, size, size)


#: Every torchvision classification model (one case each, so that the test workers share them).
CLASSIFIERS = torchvision.models.list_models(module=torchvision.models)


def test_the_classifiers_include_the_awkward_heads():
    assert {"googlenet", "inception_v3", "squeezenet1_0", "vit_h_14", "swin_v2_t", "maxvit_t"} <= set(CLASSIFIERS)


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSIFIERS)
@torch.inference_mode()
def test_every_torchvision_classifier(tmp_path, name):
    """Every classification model: the new head is num_classes wide, and kept classes give the old logits."""
    keep = [5, 0, 999]
    model, shape = _build(name)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    before = model(x)
    aux_before = [n for n, _ in auxiliary_classifiers(model)]
    model, details = apply(model, tmp_path, num_classes=4, keep=keep)
    after = model(x)
    assert after.shape == (1, 4), name
    assert_same_logits(after[:, :3], before[:, keep], msg=lambda m, n=name: f"{n}: {m}")
    assert [h["layer"] for h in details["heads"]] == [find_classifier(model)[0], *aux_before], name
    assert all(out_width(model.get_submodule(h["layer"])) == 4 for h in details["heads"]), name


def test_reclassify_leaves_every_buffer_unchanged(tmp_path):
    """Finding the auxiliary heads traces the model in train mode; timm's BatchNorms must not count that
    as a batch (num_batches_tracked), and no running statistic may move."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10).eval()
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model, _ = apply(model, tmp_path, num_classes=5)
    after = dict(model.named_buffers())
    assert after.keys() == before.keys()
    changed = [name for name, buffer in before.items() if not torch.equal(after[name], buffer)]
    assert changed == []


def _faster_rcnn() -> nn.Module:
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, min_size=128, max_size=128
    ).eval()


@torch.inference_mode()
def test_detector_scores_and_boxes_are_replaced_together(tmp_path):
    """torchvision pairs score c with box deltas 4c..4c+3: both heads get the new classes, and
    a kept class keeps its score and its own four deltas."""
    model = _faster_rcnn()
    features = torch.randn(5, 1024)
    scores_before, deltas_before = model.roi_heads.box_predictor(features)
    keep = [0, 5, 7]
    model, details = apply(model, tmp_path, keep=keep)
    predictor = model.roi_heads.box_predictor
    assert (predictor.cls_score.out_features, predictor.bbox_pred.out_features) == (3, 12)
    scores, deltas = predictor(features)
    assert_same_logits(scores, scores_before[:, keep])
    assert_same_logits(deltas.view(5, 3, 4), deltas_before.view(5, 91, 4)[:, keep])
    assert [h["layer"] for h in details["heads"]] == ["roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"]
    assert details["heads"][1]["outputs_per_class"] == 4 and details["heads"][1]["old_classes"] == 91
    detections = model(torch.rand(1, 3, 128, 128))[0]
    assert detections["boxes"].shape[1] == 4 and all(0 < c < 3 for c in detections["labels"].tolist())


def test_detector_layer_option_still_replaces_the_whole_predictor(tmp_path):
    model, _ = apply(_faster_rcnn(), tmp_path, num_classes=10, layer="roi_heads.box_predictor.cls_score")
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 40


def test_one_stage_detector_is_refused_with_the_reason_before_any_change(tmp_path):
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(StageError, match=r"^SSD predicts classes with per-level convolutions .*num_classes=N in its factory"):
        apply(model, tmp_path, num_classes=10)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def levit():
    """timm's LeViT (random weights): its logits are the average of ``head`` and ``head_dist``."""
    timm = pytest.importorskip("timm")
    return timm.create_model("levit_128s", img_size=64, num_classes=10).eval()


@pytest.mark.parametrize("layer", [None, "head.linear", "head_dist.linear"])
@torch.inference_mode()
def test_heads_averaged_into_the_logits_are_replaced_together(tmp_path, layer):
    model = levit()
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    keep = [7, 2, 9]
    model, details = apply(model, tmp_path, keep=keep, layer=layer)

    assert sorted(h["layer"] for h in details["heads"]) == ["head.linear", "head_dist.linear"]
    assert out_width(model.head.linear) == out_width(model.head_dist.linear) == 3
    assert_same_logits(model(x), before[:, keep])  # both heads keep the same classes: the average is the old one's


def test_averaged_heads_are_found_by_the_graph():
    model = levit()
    assert find_classifier(model)[0] == "head.linear"
    assert [n for n, _ in auxiliary_classifiers(model)] == ["head_dist.linear"]
    assert auxiliary_classifiers(torchvision.models.resnet18()) == []
