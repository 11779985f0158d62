"""A model's inputs: one tensor, or several passed positionally and by keyword.

Every measurement and pass calls a model the same way, ``inputs.call(model)``, which is
``model(*inputs.args, **inputs.kwargs)``. A pipeline's ``model.input_shape`` is one float tensor;
``model.inputs`` names several, each with a shape, a dtype and a value range (:class:`InputDef`),
and the seeded example batch is drawn from those definitions (:meth:`ExampleInputs.sample`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["DTYPES", "InputDef", "ExampleInputs"]

#: The dtypes an input may have, by the name a pipeline file uses.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


@dataclass(frozen=True)
class InputDef:
    """One input: its name, batch shape, dtype and value range.

    Attributes:
        name: the keyword it is passed by (a mapping of inputs), or its name in exports (a list).
        shape: the batch shape; the first dimension is the batch.
        dtype: the tensor's dtype.
        low, high: values are drawn from ``[low, high)`` (integers: ``torch.randint``; floats:
            uniform); ``None`` for a float input draws from the standard normal distribution.
        keyword: passed by keyword (``model(name=...)``), else positionally.
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    low: float | None = None
    high: float | None = None
    keyword: bool = False

    @property
    def is_float(self) -> bool:
        return self.dtype.is_floating_point

    @property
    def has_sequence(self) -> bool:
        """An integer input of two or more dimensions (token ids, a mask): dimension 1 is a sequence
        of variable length, shared by all such inputs (exports make it symbolic)."""
        return not self.is_float and len(self.shape) >= 2

    def sample(self, generator: torch.Generator, batch: int | None = None, sequence: int | None = None) -> torch.Tensor:
        """A random tensor of this input (on the CPU), drawn with ``generator``.

        Args:
            generator: the seeded generator; inputs drawn in turn from one generator differ.
            batch: a batch size other than ``shape[0]``.
            sequence: a sequence length other than ``shape[1]`` (inputs that :attr:`has_sequence` only).
        """
        shape = list(self.shape)
        if batch is not None:
            shape[0] = batch
        if sequence is not None and self.has_sequence:
            shape[1] = sequence
        if not self.is_float:
            low, high = (0, 2) if self.low is None or self.high is None else (int(self.low), int(self.high))
            return torch.randint(low, high, shape, generator=generator).to(self.dtype)
        if self.low is None or self.high is None:
            return torch.randn(*shape, generator=generator).to(self.dtype)
        return (torch.rand(*shape, generator=generator) * (self.high - self.low) + self.low).to(self.dtype)

    @classmethod
    def like(cls, name: str, tensor: torch.Tensor, keyword: bool) -> InputDef:
        """The definition of an example tensor a model source gave: integer ranges from its values."""
        if tensor.dtype.is_floating_point or tensor.numel() == 0:
            return cls(name, tuple(tensor.shape), tensor.dtype, keyword=keyword)
        return cls(name, tuple(tensor.shape), tensor.dtype, int(tensor.min()), int(tensor.max()) + 1, keyword=keyword)


@dataclass(frozen=True)
class ExampleInputs:
    """The arguments of one model call: positional tensors, then keyword tensors.

    Attributes:
        args: positional tensors, in order.
        kwargs: keyword tensors, by name.
        defs: one :class:`InputDef` per tensor (``args`` first, then ``kwargs`` in order).

    Example:
        >>> inputs = ExampleInputs.sample([InputDef("x", (1, 3, 8, 8))], seed=0)
        >>> inputs.call(torch.nn.Identity()).shape
        torch.Size([1, 3, 8, 8])
    """

    args: tuple[torch.Tensor, ...] = ()
    kwargs: Mapping[str, torch.Tensor] = field(default_factory=dict)
    defs: tuple[InputDef, ...] = ()

    @classmethod
    def sample(cls, defs: Sequence[InputDef], seed: int, device: torch.device | str = "cpu", batch: int | None = None) -> ExampleInputs:
        """Seeded tensors for ``defs``, drawn in order from one generator.

        One float input without a range gives ``torch.randn(*shape)`` after ``manual_seed(seed)``,
        the batch of a pipeline with ``input_shape``.
        """
        return cls.draw(defs, torch.Generator().manual_seed(seed), device, batch)

    @classmethod
    def draw(
        cls,
        defs: Sequence[InputDef],
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        batch: int | None = None,
        sequence: int | None = None,
    ) -> ExampleInputs:
        """Random tensors for ``defs``, drawn in order from ``generator`` (several draws from one generator differ)."""
        tensors = [d.sample(generator, batch, sequence).to(device) for d in defs]
        return cls._from_defs(defs, tensors)

    @classmethod
    def _from_defs(cls, defs: Sequence[InputDef], tensors: Sequence[torch.Tensor]) -> ExampleInputs:
        args = tuple(t for d, t in zip(defs, tensors, strict=False) if not d.keyword)
        kwargs = {d.name: t for d, t in zip(defs, tensors, strict=False) if d.keyword}
        ordered = tuple(d for d in defs if not d.keyword) + tuple(d for d in defs if d.keyword)
        return cls(args, kwargs, ordered)

    @classmethod
    def of(cls, value: Any) -> ExampleInputs:
        """Example inputs from what a model source returned: a tensor, a tuple or list of
        tensors (positional), a dict of tensors (keywords), or ``(args_tuple, kwargs_dict)``.

        Raises:
            TypeError: ``value`` is none of these.
        """
        if isinstance(value, ExampleInputs):
            return value
        if isinstance(value, torch.Tensor):
            value = (value,)
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple) and isinstance(value[1], Mapping):
            args, kwargs = value
        elif isinstance(value, Mapping):
            args, kwargs = (), value
        elif isinstance(value, (tuple, list)):
            args, kwargs = tuple(value), {}
        else:
            raise TypeError(
                f"example inputs must be a tensor, a tuple or list of tensors, or a dict of tensors, not {type(value).__name__}"
            )
        if not all(isinstance(t, torch.Tensor) for t in (*args, *kwargs.values())):
            raise TypeError("every example input must be a torch.Tensor")
        defs = [InputDef.like(f"input{i}" if len(args) > 1 else "input", t, False) for i, t in enumerate(args)]
        defs += [InputDef.like(name, t, True) for name, t in kwargs.items()]
        return cls._from_defs(defs, [*args, *kwargs.values()])

    def describe(self) -> list[dict[str, Any]]:
        """Each input's ``name``, ``shape``, ``dtype`` and ``keyword``, as reports list them."""
        return [
            {"name": d.name, "shape": list(d.shape), "dtype": str(d.dtype).removeprefix("torch."), "keyword": d.keyword} for d in self.defs
        ]

    def call(self, fn: Callable[..., Any]) -> Any:
        """``fn(*args, **kwargs)``."""
        return fn(*self.args, **self.kwargs)

    @property
    def tensors(self) -> list[torch.Tensor]:
        """Every tensor, in :attr:`defs` order."""
        return [*self.args, *self.kwargs.values()]

    @property
    def names(self) -> list[str]:
        """Every input's name, in :attr:`defs` order (the ONNX graph's input names)."""
        return [d.name for d in self.defs]

    @property
    def single(self) -> bool:
        """One positional tensor: the model is called as ``model(x)``."""
        return len(self.args) == 1 and not self.kwargs

    @property
    def first(self) -> torch.Tensor:
        """The first tensor (``ctx.example_input``)."""
        return self.tensors[0]

    @property
    def batch_size(self) -> int:
        first = self.first
        return int(first.shape[0]) if first.dim() else 1

    def map(self, fn: Callable[[torch.Tensor, InputDef], torch.Tensor]) -> ExampleInputs:
        """The same structure with every tensor replaced by ``fn(tensor, its_def)``."""
        return self._from_defs(self.defs, [fn(t, d) for t, d in zip(self.tensors, self.defs, strict=False)])

    def to(self, device: torch.device | str) -> ExampleInputs:
        return self.map(lambda t, _: t.to(device))

    def with_batch(self, batch: int) -> ExampleInputs:
        """The tensors repeated or cut along the batch dimension to ``batch`` rows."""

        def resize(t: torch.Tensor, _: InputDef) -> torch.Tensor:
            repeats = -(-batch // t.shape[0])
            return t.repeat(repeats, *([1] * (t.dim() - 1)))[:batch]

        return self.map(resize)

    def resample(self, generator: torch.Generator, batch: int | None = None, sequence: int | None = None) -> ExampleInputs:
        """New random tensors from the same definitions, on the same devices and with the same dtypes
        (``batch``, ``sequence``: other sizes, see :meth:`InputDef.sample`)."""
        drawn = ExampleInputs.draw(self.defs, generator, batch=batch, sequence=sequence)
        return ExampleInputs._from_defs(
            self.defs, [t.to(like.device, like.dtype) for t, like in zip(drawn.tensors, self.tensors, strict=False)]
        )
