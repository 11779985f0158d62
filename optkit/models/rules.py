"""Module rules: what a module whose ``forward`` is not the plain one computes, for BatchNorm
fusion, channel pruning and MAC counting.

optkit reads the arithmetic of torch's own layers from their types. A library's module with its
own ``forward`` (timm's ``BatchNormAct2d`` = BatchNorm, dropout and activation in one module;
Ultralytics' ``Conv`` with its fused form ``forward_fuse``; an attention block that reshapes a
fused qkv projection into heads) needs a *rule* that says what it computes. A rule names its
class by *class path* (``"timm.layers.norm_act.BatchNormAct2d"``) and is looked up along a
module's MRO by that string, never by importing the class: optkit describes modules of libraries
it must not import (Ultralytics is AGPL-3.0).

Plugins register rules through the ``optkit_register_module_rules(register)`` hook; passes get
them as ``ctx.module_rules`` (a :class:`ModuleRules`) and the runner counts MACs with them. Each
consumer reads the fields it knows:

- ``fuse_bn``: ``bn_reference`` + ``bn_remainder`` (a BatchNorm with elementwise extras: it is
  folded into the layer before it and replaced by its remainder), ``fuse`` (the module fuses
  itself as its library does) and ``fold_bn`` (a conv-like module folds the BatchNorm that reads
  its output into itself);
- ``prune_l1 mode: channels``: ``attention`` (prune whole heads), ``fixup`` (attributes to update
  after the surgery) and ``head`` (a detection or segmentation head keeps its layers' widths);
- MAC counting: ``macs``;
- drift and export (a library's root model class): ``output_groups`` (channel groups of its
  outputs held to tolerances of their own) and ``deployment`` (a copy that returns what the
  library deploys).

No claim of a rule is trusted blindly: fuse_bn checks ``bn_reference`` and ``fuse`` numerically
on the input the module received before it keeps the change, and channel pruning replays the
pruned model against the predicted graph.

Example:
    >>> rule = ModuleRule("my_lib.blocks.Head", computes="a detection head", subclasses=True, head=True)
    >>> rules = ModuleRules({rule.class_path: rule})
    >>> find_rule(model.head, rules)  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optkit.errors import PluginError, plugin_code

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["AttentionHeads", "ChannelGroup", "ModuleRule", "ModuleRules", "call_rule", "class_path", "find_rule"]

_CLASS_PATH = re.compile(r"^[A-Za-z_]\w*(\.(<locals>|[A-Za-z_]\w*))+$")  # qualnames may hold <locals>
_LAYOUT_AXES = {"qkv", "heads", "dim"}


def class_path(obj: object) -> str:
    """``"package.module.QualName"`` of a class, or of an object's class.

    Example:
        >>> class_path(torch.nn.Conv2d)
        'torch.nn.modules.conv.Conv2d'
    """
    kind = obj if isinstance(obj, type) else type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


@dataclass(frozen=True)
class AttentionHeads:
    """Multi-head attention, for channel pruning by whole heads.

    The module projects its input (channels last) to queries, keys and values, runs attention per
    head, and puts the heads' outputs side by side (``num_heads * head_dim`` channels). Either one
    fused Linear computes q, k and v, its rows laid out as ``layout`` over ``(3, num_heads,
    head_dim)`` (timm's ``Attention``: ``qkv="qkv"``, ``("qkv", "heads", "dim")``), or three
    Linears compute them apart, each with rows ``(num_heads, head_dim)`` (transformers' BERT and
    ViT: ``qkv=("query", "key", "value")``). An output projection ``proj`` inside the module reads
    the heads' outputs; with ``proj=None`` the module returns them, and the operator rules follow
    their channels into whatever reads them (BERT's ``BertSelfOutput.dense``, a sibling module).

    A head is one unit of pruning: its q, k and v rows and its columns of the projection go
    together, ``head_dim`` (and the softmax scale) stays as trained, and the attribute
    ``num_heads`` is set to the heads kept. Any other 4-d output with ``num_heads`` in dimension 1
    (the attention probabilities, ``[batch, heads, queries, keys]``) loses the same heads.

    Attributes:
        qkv: the name of the child ``nn.Linear`` computing q, k and v, or the names of three
            children computing q, k and v apart (dotted paths below the module are allowed).
        proj: the name of the child ``nn.Linear`` after attention, or ``None`` when the module
            returns the heads' outputs side by side.
        num_heads: the module's attribute holding the number of heads.
        head_dim: the module's attribute holding the width of one head.
        layout: the order of the axes of a fused ``qkv``'s output rows.

    Example:
        >>> AttentionHeads(qkv=("query", "key", "value"), proj=None, num_heads="num_attention_heads", head_dim="attention_head_size")
    """

    qkv: str | tuple[str, str, str] = "qkv"
    proj: str | None = "proj"
    num_heads: str = "num_heads"
    head_dim: str = "head_dim"
    layout: tuple[str, str, str] = ("qkv", "heads", "dim")

    def __post_init__(self) -> None:
        if set(self.layout) != _LAYOUT_AXES or len(self.layout) != 3:
            raise ValueError(f"AttentionHeads.layout must order 'qkv', 'heads' and 'dim', got {self.layout!r}")
        fused = isinstance(self.qkv, str) and bool(self.qkv)
        apart = isinstance(self.qkv, tuple) and len(self.qkv) == 3 and all(isinstance(n, str) and n for n in self.qkv)
        if not (fused or apart):
            raise ValueError(f"AttentionHeads.qkv must name one fused Linear or three (q, k, v), got {self.qkv!r}")
        if self.proj is not None and (not isinstance(self.proj, str) or not self.proj):
            raise ValueError(f"AttentionHeads.proj must name a Linear or be None, got {self.proj!r}")

    @property
    def projections(self) -> tuple[str, ...]:
        """The Linears computing q, k and v: one fused, or three apart."""
        return (self.qkv,) if isinstance(self.qkv, str) else self.qkv


@dataclass(frozen=True)
class ChannelGroup:
    """Channels ``start:stop`` of dimension ``dim`` of one output, compared on their own.

    Example:
        >>> ChannelGroup("scores", dim=1, start=4, stop=84)  # class scores of a YOLO [B, 84, A] tensor
    """

    name: str
    dim: int
    start: int
    stop: int


#: ``f(model, outputs) -> {output name: groups}`` (output names as :func:`optkit.measure.outputs.output_leaves` gives them).
OutputGroups = Callable[["nn.Module", Any], Mapping[str, Sequence[ChannelGroup]]]

#: ``f(model) -> (copy, details) | None``: an eval copy returning the deployment output, and what was set.
Deployment = Callable[["nn.Module"], "tuple[nn.Module, dict[str, Any]] | None"]

#: ``f(module, inputs, output)``, thop's signature: adds the module's MACs to ``module.total_ops``.
MacRule = Callable[["nn.Module", tuple[Any, ...], Any], None]


@dataclass(frozen=True)
class ModuleRule:
    """What one module class computes, for the passes that cannot read its ``forward``.

    Attributes:
        class_path: the class described, e.g. ``"timm.layers.norm_act.BatchNormAct2d"``.
        computes: the arithmetic in words (shown in reports and refusals).
        subclasses: the rule also describes subclasses (found along the MRO).
        same_forward: with ``subclasses``, only subclasses that do not override ``forward``.
        check: ``f(module) -> reason | None``: why the rule does not describe this instance
            (an option the rule does not cover), or ``None`` when it does.
        bn_reference: ``f(module, x) -> y``: the module recomputed as an eval BatchNorm of its own
            state (``running_mean``, ``running_var``, ``weight``, ``bias``, ``eps``) followed by
            elementwise extras. fuse_bn folds the module into the layer before it only when this
            equals ``module(x)`` on the input the module received.
        bn_remainder: ``f(module) -> nn.Module``: what replaces the module once its BatchNorm is
            folded (the extras: dropout, activation; ``nn.Identity()`` when there are none).
        fuse: ``f(module) -> None``: fuse the module in place as its library does (fold its
            BatchNorms into its convolution, switch to its fused ``forward``); fuse_bn keeps the
            result only when its outputs equal the module's on the inputs it received.
        fold_bn: ``f(module, bn) -> None``: fold the eval BatchNorm ``bn`` that reads the module's
            whole output (channels in dim 1) into the module, in place, so that afterwards
            ``module(x)`` computes what ``bn(module(x))`` did (a conv-like layer of its own
            ``forward``: a scaled or weight-standardized conv). fuse_bn pairs such a module with
            the BatchNorm after it like a Conv, and keeps the fold only when the folded copy's
            outputs equal ``bn(module(x))`` on the inputs the module received.
        attention: the module is multi-head attention that channel pruning may prune by heads.
        fixup: ``f(module) -> None``: update the module's own attributes after channel pruning
            cut its children and tensors (a hidden width read by ``forward``).
        head: a detection or segmentation head: channel pruning keeps the output widths of
            every layer inside it (its outputs are decoded by position).
        macs: a thop-style counting rule for the module's whole call (children included).
        output_groups: ``f(model, outputs) -> {output name: [ChannelGroup]}``, for a library's root
            model class: channel groups of its outputs that deserve tolerances of their own (a
            detector's boxes in pixels beside its scores in [0, 1]); the runner's drift and
            export_onnx's parity compare each group on its own.
        deployment: ``f(model) -> (copy, details) | None``, for a library's root model class: an
            eval copy that returns what the library deploys (export_onnx's ``deployment_output``);
            ``model`` is not changed.
        note: anything a reader of a report should know.
    """

    class_path: str
    computes: str
    subclasses: bool = False
    same_forward: bool = True
    check: Callable[[nn.Module], str | None] | None = None
    bn_reference: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    bn_remainder: Callable[[nn.Module], nn.Module] | None = None
    fuse: Callable[[nn.Module], None] | None = None
    fold_bn: Callable[[nn.Module, nn.Module], None] | None = None
    attention: AttentionHeads | None = None
    fixup: Callable[[nn.Module], None] | None = None
    head: bool = False
    macs: MacRule | None = None
    output_groups: OutputGroups | None = None
    deployment: Deployment | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.class_path, str) or not _CLASS_PATH.match(self.class_path):
            raise ValueError(f"ModuleRule.class_path must be a dotted class path such as 'pkg.module.Class', got {self.class_path!r}")
        if not isinstance(self.computes, str) or not self.computes.strip():
            raise ValueError(f"ModuleRule for {self.class_path}: computes must say what the module computes")
        for name in ("check", "bn_reference", "bn_remainder", "fuse", "fold_bn", "fixup", "macs", "output_groups", "deployment"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"ModuleRule for {self.class_path}: {name} must be callable, got {value!r}")
        if (self.bn_reference is None) != (self.bn_remainder is None):
            raise ValueError(f"ModuleRule for {self.class_path}: bn_reference and bn_remainder go together")
        if self.attention is not None and not isinstance(self.attention, AttentionHeads):
            raise TypeError(f"ModuleRule for {self.class_path}: attention must be an AttentionHeads, got {self.attention!r}")

    def problem(self, module: nn.Module) -> str | None:
        """Why this rule does not describe ``module`` (its ``check``), or ``None`` when it does."""
        return self.check(module) if self.check is not None else None


class ModuleRules(Mapping[str, ModuleRule]):
    """Module rules by class path, as the host collected them from plugins.

    A class path that two plugins both describe is kept as a conflict: looking it up raises
    :class:`~optkit.errors.PluginError` with ``conflicts[path]`` (which plugins, and how to disable
    one), so the error appears only where a model holds such a module.

    Args:
        rules: class path -> rule.
        conflicts: class path -> the message to raise when it is looked up.
        origins: class path -> who registered its rule (see :meth:`origin`).
    """

    def __init__(
        self,
        rules: Mapping[str, ModuleRule] | None = None,
        conflicts: Mapping[str, str] | None = None,
        origins: Mapping[str, str] | None = None,
    ) -> None:
        self._rules = dict(rules or {})
        self._conflicts = dict(conflicts or {})
        self._origins = dict(origins or {})

    def origin(self, path: str) -> str:
        """Who registered the rule for ``path`` (``"plugin 'x' (dist 1.0)"``), for messages that blame it."""
        return self._origins.get(path, "an unregistered plugin")

    def __getitem__(self, path: str) -> ModuleRule:
        if path in self._conflicts:
            raise PluginError(self._conflicts[path])
        return self._rules[path]

    def __contains__(self, path: object) -> bool:
        return path in self._rules or path in self._conflicts

    def __iter__(self) -> Iterator[str]:
        return iter([*self._rules, *self._conflicts])

    def __len__(self) -> int:
        return len(self._rules) + len(self._conflicts)

    def __repr__(self) -> str:
        return f"ModuleRules({sorted(self)})"


def find_rule(module: nn.Module, rules: Mapping[str, ModuleRule]) -> ModuleRule | None:
    """The rule describing ``module``: its own class's, or an ancestor's that covers subclasses.

    An ancestor's rule with ``same_forward`` does not describe a subclass that overrides
    ``forward`` (its arithmetic may differ). The lookup uses class-path strings only.

    Args:
        module: any module.
        rules: class path -> rule (``ctx.module_rules`` in a pass).

    Returns:
        The rule, or ``None``.

    Raises:
        PluginError: two plugins describe the class found (see :class:`ModuleRules`).
    """
    if not rules:
        return None
    kind = type(module)
    for base in kind.__mro__:
        path = class_path(base)
        if path not in rules:
            continue
        rule = rules[path]
        if base is kind:
            return rule
        if not rule.subclasses:
            return None
        if rule.same_forward and getattr(kind, "forward", None) is not getattr(base, "forward", None):
            return None
        return rule
    return None


def call_rule(rules: Mapping[str, ModuleRule], rule: ModuleRule, field: str, *args: Any) -> Any:
    """``rule.<field>(*args)`` under the plugin error contract (see :mod:`optkit.errors`).

    Args:
        rules: the table ``rule`` came from (a :class:`ModuleRules` names the rule's plugin).
        rule: the rule.
        field: the callable field to call (``"fuse"``, ``"fold_bn"``, ``"check"``, ...).
        *args: its arguments.

    Raises:
        PipelineError: the rule refused its input, with the rule named.
        PluginBugError: it raised anything else, naming the rule and its plugin.
    """
    origin = rules.origin(rule.class_path) if isinstance(rules, ModuleRules) else "the rules passed in"
    with plugin_code(f"module rule {rule.class_path}", origin, field):
        return getattr(rule, field)(*args)
