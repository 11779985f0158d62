"""Channel groups and deployment outputs come from module rules: core measurement asks the rules
(``ModuleRule.output_groups`` / ``.deployment``) and never names a library; the YOLO knowledge
answers from plugins/module_rules. The YOLO classes here are stand-ins named by Ultralytics'
class paths (optkit recognises classes by path only), so no Ultralytics install is needed."""

from __future__ import annotations

import torch
from torch import nn

from optkit import ChannelGroup, ModuleRule, channel_groups_for
from optkit.host.facade import Host


class Toy(nn.Module):
    def forward(self, x):
        return x.flatten(2)  # [B, C, H*W]


def _groups(model, outputs):
    return {"output": [ChannelGroup("first", 1, 0, 2), ChannelGroup("rest", 1, 2, 5)]}


TOY_RULE = ModuleRule(f"{Toy.__module__}.Toy", computes="a flatten", output_groups=_groups)


class Wrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def test_the_rule_of_the_model_names_its_groups_also_through_a_wrapper():
    rules = {TOY_RULE.class_path: TOY_RULE}
    x = torch.randn(1, 5, 2, 2)
    expected = {"output": [ChannelGroup("first", 1, 0, 2), ChannelGroup("rest", 1, 2, 5)]}
    assert channel_groups_for(Toy(), Toy()(x), rules) == expected
    assert channel_groups_for(Wrapper(Wrapper(Toy())), Toy()(x), rules) == expected
    assert channel_groups_for(Toy(), Toy()(x), {}) == {}  # no rule, no groups
    assert channel_groups_for(nn.Conv2d(5, 5, 1), x, rules) == {}


def _path_named(module: str, name: str, base: type = nn.Module) -> type:
    return type(name, (base,), {"__module__": module, "__qualname__": name})


class _Head(nn.Module):
    def __init__(self, nc: int):
        super().__init__()
        self.nc, self.stride = nc, torch.tensor([8.0])
        self.export, self.shape = False, (1, 2)  # what Ultralytics' exporter sets on the deployment copy
        self.conv = nn.Conv2d(3, 4 + nc, 1)

    def forward(self, x):
        return self.conv(x).flatten(2)  # [B, 4 + nc, anchors], as a Detect head's prediction


_Head.__module__, _Head.__qualname__ = "ultralytics.nn.modules.head", "Detect"


class _Root(_path_named("ultralytics.nn.tasks", "BaseModel")):  # type: ignore[misc]  # a class built at run time
    def __init__(self, nc: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), _Head(nc))

    def forward(self, x):
        return self.model(x)


_Root.__module__, _Root.__qualname__ = "ultralytics.nn.tasks", "DetectionModel"


def test_the_yolo_rules_of_the_standard_plugins_split_predictions_into_boxes_and_scores():
    rules = Host().rule_table()
    model = _Root(nc=6).eval()
    outputs = model(torch.randn(1, 3, 4, 4))
    groups = channel_groups_for(model, outputs, rules)
    assert groups == {"output": [ChannelGroup("boxes", 1, 0, 4), ChannelGroup("scores", 1, 4, 10)]}
    assert channel_groups_for(Wrapper(model), outputs, rules) == groups  # optkit's TTA wraps it in .model


def test_the_yolo_rules_give_the_deployment_view_without_changing_the_model():
    rules = Host().rule_table()
    model = _Root(nc=6).eval()
    rule = rules["ultralytics.nn.tasks.BaseModel"]
    assert rule.deployment is not None
    view, details = rule.deployment(model)
    assert view is not model and details["head"] == "ultralytics.nn.modules.head.Detect"
    assert (view.model[-1].export, view.model[-1].shape) == (True, None)
    assert (model.model[-1].export, model.model[-1].shape) == (False, (1, 2))
