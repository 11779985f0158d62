"""A dataflow probe: run the model once and record who consumes each layer's output.

Module hooks alone cannot see a plain function consuming a tensor (``y = conv(x); z = y + 1``),
so the probe also runs under a :class:`~torch.overrides.TorchFunctionMode` that sees every torch
operation and its tensor arguments. Tensors are followed by identity; a weak reference drops a
tensor from the watch list when it is freed, so an address reused later is not mistaken for it.
"""

from __future__ import annotations

import logging
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from optkit import flatten_outputs
from optkit_plugins.fuse_bn.graph import IsLayer, IsNorm, is_batchnorm, is_foldable_layer

__all__ = ["DataflowRecord", "probe_dataflow"]

log = logging.getLogger(__name__)

# Operations that read a tensor's metadata, never its values: folding cannot change what they see.
# (torch's stubs type these C descriptors as the values they return, hence the ignores.)
_METADATA_READS = (
    torch.Tensor.shape.__get__,  # type: ignore[attr-defined]
    torch.Tensor.ndim.__get__,  # type: ignore[attr-defined]
    torch.Tensor.dtype.__get__,  # type: ignore[attr-defined]
    torch.Tensor.device.__get__,
    torch.Tensor.requires_grad.__get__,  # type: ignore[attr-defined]
    torch.Tensor.size,
    torch.Tensor.dim,
    torch.Tensor.numel,
    torch.Tensor.__len__,
    torch.Tensor.is_contiguous,
    torch.Tensor.stride,
)


@dataclass
class DataflowRecord:
    """What one forward pass showed, keyed by module qualified name.

    Attributes:
        calls: how many times each layer and BatchNorm was called.
        output_dims: the number of dimensions of each layer's output.
        bn_source: for each BatchNorm call, the layer whose output tensor was its input
            (``None`` when the input came from anything else).
        foreign_uses: for each layer, the operations outside its BatchNorm partner that read
            its output; ``"<model output>"`` when the output is returned by the model.
        bn_inputs: the input each BatchNorm named in ``keep_inputs`` received (its first call).
    """

    calls: Counter[str] = field(default_factory=Counter)
    output_dims: dict[str, int] = field(default_factory=dict)
    bn_source: dict[str, str | None] = field(default_factory=dict)
    foreign_uses: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    bn_inputs: dict[str, torch.Tensor] = field(default_factory=dict)


class _ConsumerMode(TorchFunctionMode):
    """Records every operation that reads a watched tensor, with the BatchNorm running it (if any)."""

    def __init__(self, watched: dict[int, str], active_bn: list[str], record: DataflowRecord, partner: dict[str, str]):
        super().__init__()
        self.watched, self.active_bn, self.record, self.partner = watched, active_bn, record, partner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _METADATA_READS:
            for leaf in tree_leaves((args, kwargs)):
                layer = self.watched.get(id(leaf)) if isinstance(leaf, torch.Tensor) else None
                if layer is not None and not (self.active_bn and self.partner.get(self.active_bn[-1]) == layer):
                    self.record.foreign_uses[layer].append(getattr(func, "__name__", repr(func)))
        return func(*args, **kwargs)


@torch.no_grad()
def probe_dataflow(
    model: nn.Module,
    example_input: Any,
    is_norm: IsNorm = is_batchnorm,
    keep_inputs: frozenset[str] = frozenset(),
    is_layer: IsLayer = is_foldable_layer,
) -> DataflowRecord:
    """Run ``model`` once on ``example_input`` and record the dataflow around layers and BatchNorms.

    The model is left exactly as it was: every hook is removed, whatever happens.

    Args:
        model: the model, in the mode it will be used in (eval).
        example_input: a tensor, or a tuple of positional arguments.
        is_norm: which modules count as BatchNorms (module rules may describe more).
        keep_inputs: BatchNorms whose input is kept (``bn_inputs``), for a rule's numerical proof.
        is_layer: which modules a BatchNorm may fold into (module rules may describe more).

    Returns:
        The :class:`DataflowRecord`.
    """
    record = DataflowRecord()
    watched: dict[int, str] = {}
    active_bn: list[str] = []
    # A BatchNorm's uses of a tensor count as its own only for the layer that produced its input.
    partner: dict[str, str] = {}

    def on_layer_output(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            record.calls[name] += 1
            if isinstance(output, torch.Tensor):
                record.output_dims[name] = output.dim()  # read before watching, or it counts as a use
                watched[id(output)] = name
                weakref.finalize(output, watched.pop, id(output), None)

        return hook

    def on_bn_enter(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            record.calls[name] += 1
            source = watched.get(id(args[0])) if len(args) == 1 and isinstance(args[0], torch.Tensor) else None
            record.bn_source[name] = source
            if source is not None:
                partner[name] = source
            active_bn.append(name)
            # Cloned as the BatchNorm's own read of its input, so it is no foreign use.
            if name in keep_inputs and name not in record.bn_inputs and len(args) == 1 and isinstance(args[0], torch.Tensor):
                record.bn_inputs[name] = args[0].detach().clone()

        return hook

    def on_bn_exit(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            active_bn.pop()

        return hook

    handles = []
    try:
        for name, module in model.named_modules(remove_duplicate=False):
            if is_layer(module):
                handles.append(module.register_forward_hook(on_layer_output(name)))
            elif is_norm(module):
                handles.append(module.register_forward_pre_hook(on_bn_enter(name)))
                handles.append(module.register_forward_hook(on_bn_exit(name)))
        inputs = example_input if isinstance(example_input, tuple) else (example_input,)
        with _ConsumerMode(watched, active_bn, record, partner):
            outputs = model(*inputs)
        for tensor in flatten_outputs(outputs):
            layer = watched.get(id(tensor))
            if layer is not None:
                record.foreign_uses[layer].append("<model output>")
    finally:
        for handle in handles:
            handle.remove()
    log.debug("dataflow probe: %d module calls recorded", sum(record.calls.values()))
    return record
