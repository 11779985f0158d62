"""Channel importance: the view of one group of coupled channels that a pruning criterion scores.

Channel pruning removes *groups* of channels that must go together: the output channels of a
convolution, the matching input channels of the layers that read them, the BatchNorm in between,
and every layer tied to them by a residual add. A criterion (a plugin registers one with
``optkit_register_importances``) gets one :class:`PruningGroup` and returns one score per channel;
the lowest scores are removed first::

    import torch
    from optkit import hookimpl
    from optkit.models import PruningGroup

    def output_l2(group: PruningGroup) -> torch.Tensor:
        return group.aggregate([t.per_channel(t.tensor.pow(2)) for t in group.weights("output")])

    @hookimpl
    def optkit_register_importances(register):
        register("output_l2", output_l2)

Pipelines then say ``prune_channels: {importance: output_l2}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from optkit.errors import StageError

if TYPE_CHECKING:
    from torch import nn

    from optkit.passes import PassData

__all__ = ["PruningGroup", "GroupTensor", "Importance", "TensorRole"]

#: What a tensor of a group is to its channels: ``output`` (rows of the layer that produces them),
#: ``input`` (the columns of a layer that reads them), ``norm`` (a normalization's scale), ``bias``
#: (a bias or a normalization's shift) or ``other``.
TensorRole = Literal["output", "input", "norm", "bias", "other"]

#: The reductions that combine per-tensor scores into one per channel.
REDUCTIONS = ("sum", "mean", "max")


@dataclass(frozen=True)
class GroupTensor:
    """One parameter of a group, and where each of the group's channels lies in it.

    Attributes:
        name: the parameter's qualified name (``"layer1.0.conv1.weight"``).
        module: the name of the module that owns it.
        role: what it is to the channels (:data:`TensorRole`).
        tensor: the parameter's values (detached; do not change them).
        dim: the dimension the channels lie along (0 for an output, 1 for an input of a convolution).
        positions: ``positions[i]``: the indices along ``dim`` that belong to channel ``i`` (one
            for a plain convolution; several where a Linear reads a flattened feature map).
    """

    name: str
    module: str
    role: TensorRole
    tensor: torch.Tensor
    dim: int
    positions: tuple[tuple[int, ...], ...]

    def per_channel(self, values: torch.Tensor) -> torch.Tensor:
        """Sum ``values`` (the tensor's shape, or one value per index along ``dim``) over each channel.

        Args:
            values: e.g. ``t.tensor.abs()``: every dimension but ``dim`` is summed, then the
                indices of each channel.

        Returns:
            One float per channel of the group (``len(positions)``).

        Example:
            >>> t = GroupTensor("w", "", "output", torch.ones(4, 3), 0, ((0, 1), (2,), (3,)))
            >>> t.per_channel(t.tensor).tolist()
            [6.0, 3.0, 3.0]
        """
        values = values.detach().float()
        if values.dim() > 1:
            values = values.transpose(0, self.dim).flatten(1).sum(1)
        index = torch.tensor([c for c, ps in enumerate(self.positions) for _ in ps], dtype=torch.long, device=values.device)
        flat = torch.tensor([p for ps in self.positions for p in ps], dtype=torch.long, device=values.device)
        return torch.zeros(len(self.positions), device=values.device).index_add_(0, index, values[flat])


@dataclass(frozen=True)
class PruningGroup:
    """One group of coupled channels, as a criterion sees it.

    Attributes:
        name: the first layer producing these channels (``"layer1.0.conv1"``).
        channels: how many channels (pruning units) the group has; a criterion returns this many scores.
        layers: every module owning one of :attr:`tensors`, by name.
        tensors: the parameters holding the group's channels (:class:`GroupTensor`).
        data: the pipeline's loaders (:class:`optkit.PassData`), or ``None`` without a ``data:`` section.
        reduction: how the pass asks criteria to combine tensors (``sum``, ``mean`` or ``max``;
            :meth:`aggregate` applies it).
    """

    name: str
    channels: int
    layers: Mapping[str, nn.Module]
    tensors: tuple[GroupTensor, ...]
    data: PassData | None = None
    reduction: str = "mean"
    gradient_source: Callable[[], Mapping[str, torch.Tensor]] | None = field(default=None, repr=False)

    def weights(self, *roles: TensorRole) -> list[GroupTensor]:
        """The group's tensors of the given roles (all of them when none is given)."""
        return [t for t in self.tensors if not roles or t.role in roles]

    def gradients(self) -> Mapping[str, torch.Tensor]:
        """``parameter name -> ∂L/∂w`` (the parameter's shape), summed over the pass's batches.

        ``L`` is the cross-entropy on ``data.calibration`` (labels where given, else the model's own
        top-1): computed once per pruning step and shared by every group.

        Raises:
            optkit.errors.StageError: the pipeline has no data to compute them on.
        """
        if self.gradient_source is None:
            raise StageError("this importance needs gradients: add data.calibration or data.train to the pipeline")
        return self.gradient_source()

    def aggregate(self, scores: Sequence[torch.Tensor]) -> torch.Tensor:
        """Combine per-tensor scores (one per channel each) with :attr:`reduction`.

        Returns:
            One score per channel; zeros when ``scores`` is empty.
        """
        if not scores:
            return torch.zeros(self.channels)
        stacked = torch.stack([s.float() for s in scores])
        if self.reduction == "max":
            return stacked.amax(0)
        return stacked.mean(0) if self.reduction == "mean" else stacked.sum(0)


#: A criterion: one score per channel of the group (higher: more important, kept longer).
Importance = Callable[[PruningGroup], torch.Tensor]
