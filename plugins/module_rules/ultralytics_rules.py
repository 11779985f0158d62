"""Rules for Ultralytics (``ultralytics.nn.modules``) modules, named by class path only: optkit
never imports Ultralytics (AGPL-3.0).

Fusion follows the library's own ``BaseModel.fuse()``, so that a fused model is one Ultralytics
recognises (``is_fused()`` is true, ``fuse()`` again does nothing, ``YOLO.predict`` runs):

- ``Conv`` (and ``DWConv``): ``bn`` is folded into ``conv``, ``bn`` is deleted, and
  ``forward = forward_fuse`` (an instance attribute: ``act(conv(x))``);
- ``Conv2``: the parallel 1x1 ``cv2`` is added to the centre of ``conv`` first and deleted;
- ``ConvTranspose``: the same with ``conv_transpose`` (a ``bn`` that is ``nn.Identity`` is just deleted);
- ``RepConv``: the 3x3, 1x1 and identity-BatchNorm branches become one ``conv`` (an ``nn.Conv2d``
  with a bias); ``conv1``, ``conv2``, ``bn`` and ``id_tensor`` are deleted;
- ``RepVGGDW``: the 7x7 and 3x3 depthwise branches become one ``nn.Conv2d`` in ``conv``; ``conv1``
  is deleted.

Channel pruning: ``C2f`` (and ``C3k2``, ...) and ``C2PSA`` read their hidden width from the
attribute ``c`` (``forward_split``, ``split((c, c))``), which is updated after the surgery;
``Detect`` and its subclasses (``Segment``, ``Pose``, ``OBB``, ``v10Detect``, ...) and
``RTDETRDecoder`` are heads: their layers keep their output widths.

MAC counting: ``Concat`` does no multiply-accumulates (without a rule it would be listed as
uncounted: a leaf that ran no counted operator).

Drift and export: the root models (Ultralytics' ``BaseModel``, YOLOv5's models) name the channel
groups of their predictions and give their deployment view (:mod:`~optkit_plugins.module_rules.yolo`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from optkit import ModuleRule, bn_affine, fold_bn_into_layer, zero_macs
from optkit_plugins.module_rules.yolo import ULTRALYTICS_ROOTS, YOLOV5_ROOTS, deployment_view, detection_output_groups

__all__ = ["ULTRALYTICS_RULES", "fuse_conv", "fuse_conv2", "fuse_conv_transpose", "fuse_rep_conv", "fuse_rep_vgg_dw"]

_MODULES = "ultralytics.nn.modules"

#: An Ultralytics module: optkit cannot import its class (AGPL-3.0), so its attributes (``conv``,
#: ``bn``, ``c1``, ...) are reached by duck typing, as the rules' ``applies`` checks make safe.
UltralyticsModule = Any


def _switch_to_fused_forward(module: UltralyticsModule) -> None:
    module.forward = module.forward_fuse  # what Ultralytics' fuse() does: an instance attribute


def _batchnorm_problem(bn: object, where: str) -> str | None:
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        return f"{where} is {type(bn).__name__}, not a BatchNorm"
    if bn.running_mean is None or bn.running_var is None:
        return f"{where} has no running statistics"
    return None


def _conv_problem(module: UltralyticsModule) -> str | None:
    if "bn" not in module._modules:
        return "it has no bn (already fused)"
    if not isinstance(getattr(module, "conv", None), nn.Conv2d):
        return "its conv is not an nn.Conv2d"
    return _batchnorm_problem(module.bn, "bn")


def fuse_conv(module: UltralyticsModule) -> None:
    """Fuse an Ultralytics ``Conv`` (``act(bn(conv(x)))``) as ``BaseModel.fuse()`` does."""
    fold_bn_into_layer(module.conv, module.bn)
    del module.bn
    _switch_to_fused_forward(module)


def _conv2_problem(module: UltralyticsModule) -> str | None:
    if "cv2" not in module._modules:
        return "it has no cv2 (already fused)"
    return _conv_problem(module)


@torch.no_grad()
def fuse_conv2(module: UltralyticsModule) -> None:
    """Fuse an Ultralytics ``Conv2`` (``act(bn(conv(x) + cv2(x)))``): ``cv2`` into ``conv``'s centre, then as a ``Conv``."""
    side = torch.zeros_like(module.conv.weight)
    centre = [k // 2 for k in side.shape[2:]]
    side[:, :, centre[0] : centre[0] + 1, centre[1] : centre[1] + 1] = module.cv2.weight
    module.conv.weight.add_(side)
    del module.cv2
    fuse_conv(module)


def _conv_transpose_problem(module: UltralyticsModule) -> str | None:
    if "bn" not in module._modules:
        return "it has no bn (already fused)"
    if type(module.bn) is nn.Identity:
        return None
    return _batchnorm_problem(module.bn, "bn")


def fuse_conv_transpose(module: UltralyticsModule) -> None:
    """Fuse an Ultralytics ``ConvTranspose`` (``act(bn(conv_transpose(x)))``)."""
    if type(module.bn) is not nn.Identity:
        fold_bn_into_layer(module.conv_transpose, module.bn)
    del module.bn
    _switch_to_fused_forward(module)


def _folded(conv: nn.Conv2d, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``bn(conv(x))`` as one kernel and bias, in float64."""
    scale, shift = bn_affine(bn)
    weight = conv.weight.detach().double() * scale.reshape(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.detach().double() * scale + shift
    return weight, bias


def _branches_problem(module: UltralyticsModule, branches: tuple[str, str]) -> str | None:
    """Why a re-parameterisable block (two ``Conv`` branches) cannot be fused, or ``None``."""
    if "conv1" not in module._modules:
        return "it has no conv1 (already fused)"
    for name in branches:
        problem = _conv_problem(getattr(module, name))
        if problem:
            return f"{name}: {problem}"
    return None


def _rep_conv_problem(module: UltralyticsModule) -> str | None:
    problem = _branches_problem(module, ("conv1", "conv2"))
    if problem:
        return problem
    if module.conv1.conv.kernel_size != (3, 3) or module.conv2.conv.kernel_size != (1, 1):
        return "its branches are not 3x3 and 1x1"
    identity = getattr(module, "bn", None)
    return None if identity is None else _batchnorm_problem(identity, "the identity branch bn")


@torch.no_grad()
def fuse_rep_conv(module: UltralyticsModule) -> None:
    """Fuse an Ultralytics ``RepConv`` (``act(conv1(x) + conv2(x) + bn(x))``) as ``RepConv.fuse_convs`` does."""
    weight, bias = _folded(module.conv1.conv, module.conv1.bn)
    w1, b1 = _folded(module.conv2.conv, module.conv2.bn)
    weight, bias = weight + F.pad(w1, [1, 1, 1, 1]), bias + b1
    identity = getattr(module, "bn", None)
    if identity is not None:
        per_group = module.c1 // module.g
        kernel = torch.zeros_like(weight)
        for i in range(module.c1):
            kernel[i, i % per_group, 1, 1] = 1.0
        scale, shift = bn_affine(identity)
        weight, bias = weight + kernel * scale.reshape(-1, 1, 1, 1), bias + shift
    ref = module.conv1.conv
    conv = nn.Conv2d(ref.in_channels, ref.out_channels, ref.kernel_size, ref.stride, ref.padding, ref.dilation, ref.groups, bias=True)
    conv = conv.to(device=ref.weight.device, dtype=ref.weight.dtype).requires_grad_(False)
    conv.weight.copy_(weight)
    conv.get_parameter("bias").copy_(bias)
    module.conv = conv
    for name in ("conv1", "conv2", "bn", "id_tensor"):
        if hasattr(module, name):
            delattr(module, name)
    _switch_to_fused_forward(module)


def _rep_vgg_dw_problem(module: UltralyticsModule) -> str | None:
    return _branches_problem(module, ("conv", "conv1"))


@torch.no_grad()
def fuse_rep_vgg_dw(module: UltralyticsModule) -> None:
    """Fuse an Ultralytics ``RepVGGDW`` (``act(conv(x) + conv1(x))``, depthwise 7x7 and 3x3) as ``RepVGGDW.fuse`` does."""
    weight, bias = _folded(module.conv.conv, module.conv.bn)
    w3, b3 = _folded(module.conv1.conv, module.conv1.bn)
    pad = (weight.shape[-1] - w3.shape[-1]) // 2
    conv = module.conv.conv
    conv.weight = nn.Parameter((weight + F.pad(w3, [pad] * 4)).to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter((bias + b3).to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    module.conv = conv  # the nn.Conv2d replaces the Conv wrapper, as RepVGGDW.fuse does
    del module.conv1
    _switch_to_fused_forward(module)


def _hidden_width_fixup(module: UltralyticsModule) -> None:
    module.c = module.cv1.conv.out_channels // 2


def _c2f_problem(module: UltralyticsModule) -> str | None:
    if not isinstance(getattr(getattr(module, "cv1", None), "conv", None), nn.Conv2d):
        return "its cv1 is not an Ultralytics Conv"
    return None


_FUSED_FORM = "fuse_bn fuses it as Ultralytics' fuse() does; the fused module runs forward_fuse"

ULTRALYTICS_RULES: tuple[ModuleRule, ...] = (
    ModuleRule(
        f"{_MODULES}.conv.Conv",
        computes="act(bn(conv(x))); fused (forward_fuse): act(conv(x)) with bn folded into conv",
        subclasses=True,  # DWConv; a subclass with its own forward (Conv2) has its own rule
        check=_conv_problem,
        fuse=fuse_conv,
        note=_FUSED_FORM,
    ),
    ModuleRule(
        f"{_MODULES}.conv.Conv2",
        computes="act(bn(conv(x) + cv2(x))), cv2 a parallel 1x1; fused: act(conv(x)) with cv2 and bn folded into conv",
        check=_conv2_problem,
        fuse=fuse_conv2,
        note=_FUSED_FORM,
    ),
    ModuleRule(
        f"{_MODULES}.conv.ConvTranspose",
        computes="act(bn(conv_transpose(x))); fused (forward_fuse): act(conv_transpose(x))",
        check=_conv_transpose_problem,
        fuse=fuse_conv_transpose,
        note=_FUSED_FORM,
    ),
    ModuleRule(
        f"{_MODULES}.conv.RepConv",
        computes="act(conv1(x) + conv2(x) + bn(x)): 3x3, 1x1 and identity branches; fused: act(conv(x)), one 3x3",
        check=_rep_conv_problem,
        fuse=fuse_rep_conv,
        note=_FUSED_FORM,
    ),
    ModuleRule(
        f"{_MODULES}.block.RepVGGDW",
        computes="act(conv(x) + conv1(x)): depthwise 7x7 and 3x3 branches; fused: act(conv(x)), one 7x7 nn.Conv2d",
        check=_rep_vgg_dw_problem,
        fuse=fuse_rep_vgg_dw,
        note=_FUSED_FORM,
    ),
    ModuleRule(
        f"{_MODULES}.block.C2f",
        computes="cv2(cat(chunk(cv1(x), 2) + [m_i(...)])); forward_split splits cv1's output by the attribute c",
        subclasses=True,
        same_forward=False,  # C3k2, C2fPSA, ...: c is half of cv1's width in all of them
        check=_c2f_problem,
        fixup=_hidden_width_fixup,
        note="channel pruning updates c (half of cv1's width)",
    ),
    ModuleRule(
        f"{_MODULES}.block.C2PSA",
        computes="a, b = cv1(x).split((c, c)); cv2(cat(a, m(b)))",
        check=_c2f_problem,
        fixup=_hidden_width_fixup,
        note="channel pruning updates c (the split sizes)",
    ),
    ModuleRule(
        f"{_MODULES}.conv.Concat",
        computes="torch.cat(x, self.d): no multiply-accumulates",
        macs=zero_macs,
        note="counted as zero MACs, not listed as uncounted",
    ),
    ModuleRule(
        f"{_MODULES}.head.Detect",
        computes="per level: box (cv2) and class (cv3) branches, decoded by position (DFL, anchors)",
        subclasses=True,
        same_forward=False,  # Segment, Pose, OBB, v10Detect, WorldDetect, YOLOEDetect, ...
        head=True,
        note="a detection head: channel pruning keeps the output widths of its layers",
    ),
    ModuleRule(
        f"{_MODULES}.head.RTDETRDecoder",
        computes="a transformer decoder over the encoder's levels; queries decoded to boxes and scores",
        subclasses=True,
        same_forward=False,
        head=True,
        note="a detection head: channel pruning keeps the output widths of its layers",
    ),
    *(
        ModuleRule(
            root,
            computes="a YOLO model: its layers in .model, the head last",
            subclasses=True,
            same_forward=False,  # DetectionModel, SegmentationModel, ... each have their own forward
            output_groups=detection_output_groups,
            deployment=deployment_view,
            note="drift and ONNX parity hold boxes, scores and extra channels to their own tolerances; "
            "export_onnx exports the deployment output",
        )
        for root in (*ULTRALYTICS_ROOTS, *YOLOV5_ROOTS)
    ),
)
