"""A pipeline's ``data:`` section as datasets and loaders: built once per run, checked before
anything runs, and handed to every stage on its device.

Every loader yields ``(inputs, labels)`` batches: ``inputs`` as the model takes them, ``labels`` an
int64 tensor of class indices, ``-1`` for a sample its dataset gives no label.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.utils._pytree as pytree
from torch.utils.data import DataLoader, Dataset, Subset

from optkit.config.data import DATA_ROLES
from optkit.data.sources import DatasetLoader, DatasetRequest, verify_images
from optkit.data.transforms import build_transform
from optkit.errors import PipelineError, plugin_code
from optkit.passes import PassData

if TYPE_CHECKING:
    from optkit.config.data import DatasetSpec, DataSpec

__all__ = ["DatasetLookup", "LabeledSamples", "DataSet", "PipelineData", "DeviceLoader", "build_data", "as_labeled"]

log = logging.getLogger(__name__)

#: Finds the dataset loader registered for a scheme and who registered it (``"plugin 'x' (dist 1.0)"``,
#: for messages that blame it); raises :class:`~optkit.errors.PipelineError` for an unknown scheme.
DatasetLookup = Callable[[str], "tuple[DatasetLoader, str]"]


def _is_model_inputs(value: Any) -> bool:
    """A tensor, or the inputs of a model of several: a tuple or list of tensors (positional), a dict of them (by name)."""
    if isinstance(value, torch.Tensor):
        return True
    parts = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else None
    return parts is not None and bool(parts) and all(isinstance(p, torch.Tensor) for p in parts)


def as_labeled(item: Any, where: str) -> tuple[Any, int]:
    """A dataset item as ``(inputs, label)``: a tensor alone gets label ``-1``. The inputs are a
    tensor, or for a model of several inputs a tuple of tensors (positional) or a dict of them (by name).

    Raises:
        PipelineError: the item is neither a tensor nor an ``(inputs, label)`` pair with an integer label.
    """
    if isinstance(item, torch.Tensor):
        return item, -1
    if isinstance(item, (tuple, list)) and len(item) == 2 and _is_model_inputs(item[0]):
        label = item[1]
        if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point() and label.dtype != torch.bool:
            label = int(label)
        if isinstance(label, int) and not isinstance(label, bool):
            if label < -1:  # -1 alone means "no label"; any other negative value is a broken dataset, not a missing label
                raise PipelineError(f"{where}: a sample's label is {label}; labels are class indices 0, 1, ... or -1 for none")
            return item[0], label
        raise PipelineError(f"{where}: a sample's label must be an integer class index, got {_describe(label)}")
    raise PipelineError(
        f"{where}: a sample must be a tensor or an (inputs, label) pair (inputs: a tensor, a tuple or a dict of tensors), "
        f"got {_describe(item)}"
    )


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(type(v).__name__ for v in value[:4])})"
    return f"a {type(value).__name__}"


class LabeledSamples(Dataset):
    """A dataset's items as ``(input, label)`` pairs (label ``-1`` for inputs without one).

    Args:
        dataset: any map-style dataset of tensors or ``(tensor, label)`` pairs.
        where: how messages name it (``data.eval (imagefolder:data/val)``).
    """

    def __init__(self, dataset: Dataset, where: str) -> None:
        self.dataset, self.where = dataset, where

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return as_labeled(self.dataset[index], self.where)


class DeviceLoader:
    """A ``DataLoader`` whose ``(inputs, labels)`` batches arrive on ``device``.

    Attributes:
        loader: the CPU ``DataLoader``.
        device: where batches are moved.
        classes: the class names the dataset reports (an image folder's class folders), else ``None``.
    """

    def __init__(self, loader: DataLoader, device: torch.device, classes: list[str] | None = None) -> None:
        self.loader, self.device, self.classes = loader, device, classes

    def batched(self, batch_size: int | None = None, *, seed: int = 0, drop_last: bool = False) -> DeviceLoader:
        """The same samples on the same device, shuffled every epoch from ``seed`` (a pass's own order).

        A pass that trains shuffles with its own seed, so that its result depends on its options
        only, not on what read the loader before it.

        Args:
            batch_size: samples per batch; default: this loader's.
            seed: seeds the shuffling (each pass over the loader is a new permutation).
            drop_last: drop the last batch when it is incomplete (training on a batch of one
                sample fails with BatchNorm).

        Returns:
            A new loader; this one is unchanged.
        """
        loader = DataLoader(
            self.loader.dataset,
            batch_size=batch_size or self.loader.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            drop_last=drop_last,
            num_workers=self.loader.num_workers,
        )
        return DeviceLoader(loader, self.device, self.classes)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for inputs, labels in self.loader:
            yield pytree.tree_map(lambda t: t.to(self.device), inputs), labels.to(self.device)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def dataset(self) -> Dataset:
        """The samples (``(input, label)`` pairs, after ``limit``)."""
        return self.loader.dataset

    @property
    def batch_size(self) -> int | None:
        return self.loader.batch_size


@dataclass
class DataSet:
    """One entry of ``data:``, loaded.

    Attributes:
        role: ``eval``, ``train`` or ``calibration``.
        spec: the validated entry.
        samples: the ``(input, label)`` samples, after ``limit``.
        loader: batches of them on the CPU (in order for ``eval``; shuffled, seeded, when ``shuffle``).
        classes: the class names the dataset reports (``ImageFolder``'s folders), else ``None``.
        details: what the report says about it (source, samples, classes, batch size).
    """

    role: str
    spec: DatasetSpec
    samples: Dataset
    loader: DataLoader
    classes: list[str] | None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def option(self) -> str:
        return f"data.{self.role}"

    def first_sample(self) -> tuple[torch.Tensor, int]:
        """The first ``(input, label)``, read through the transform (for checks before running)."""
        return self.samples[0]


@dataclass
class PipelineData:
    """The data sets of a run (``eval``, ``train``, ``calibration``), built by :func:`build_data`.

    ``calibration`` falls back to ``train``, else ``eval``.
    """

    sets: dict[str, DataSet]

    def get(self, role: str) -> DataSet | None:
        """The data set for ``role``, with ``calibration`` falling back to ``train``, else ``eval``."""
        if role in self.sets:
            return self.sets[role]
        if role == "calibration":
            return self.sets.get("train") or self.sets.get("eval")
        return None

    def details(self) -> dict[str, Any]:
        """What the baseline stage's ``details.data`` says: each entry's source, samples and classes."""
        found = {role: data_set.details for role, data_set in self.sets.items()}
        if "calibration" not in self.sets and self.get("calibration") is not None:
            found["calibration"] = {"same_as": self.get("calibration").role}  # type: ignore[union-attr]
        return found

    def on_device(self, device: torch.device) -> PassData:
        """The loaders a pass reads (``ctx.data``), their batches on ``device``."""
        loaders = {
            role: DeviceLoader(data_set.loader, device, data_set.classes) for role in DATA_ROLES if (data_set := self.get(role)) is not None
        }
        return PassData(**loaders)


def build_data(spec: DataSpec, get_dataset: DatasetLookup, base_dir: Path, *, seed: int = 0) -> PipelineData:
    """Load every data set of a ``data:`` section and check every image file it will read.

    Args:
        spec: the validated ``data:`` section.
        get_dataset: the loader registered for a scheme (``Host.get_dataset``).
        base_dir: relative paths resolve against it (the pipeline file's folder, or ``data.root``).
        seed: seeds ``limit`` subsets and shuffling.

    Returns:
        The data sets, by role.

    Raises:
        PipelineError: an unknown scheme, a missing or empty folder, a file that is no readable
            image (named), a sample that is not ``(tensor, label)``, a loader that refuses its
            entry (named); nothing has run yet.
        PluginBugError: a loader raised anything but an optkit error (a bug in its plugin).
    """
    transform = build_transform(spec.transform)
    # Map-style data sets with a length (checked when loaded): torch's Dataset does not declare __len__.
    loaded: dict[str, tuple[Any, dict[str, Any]]] = {}  # the same source for two roles is read once
    sets = {}
    for role, entry in spec.datasets().items():
        where = f"data.{role} ({entry.source})"
        key = json.dumps([entry.source, entry.kwargs], sort_keys=True, default=str)
        if key not in loaded:
            try:
                loader, plugin = get_dataset(entry.scheme)
            except PipelineError as exc:  # an unknown scheme
                raise PipelineError(f"data.{role}: {exc.message}") from None
            request = DatasetRequest(entry.target, entry, role, transform, base_dir)
            with plugin_code(where, plugin, f"the {entry.scheme!r} dataset loader", named=(f"data.{role}",)):
                dataset = loader(request)
            if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
                raise PipelineError(f"data.{role}: the {entry.scheme!r} loader returned {type(dataset).__name__}, not a Dataset")
            loaded[key] = dataset, request.details
        dataset, source_details = loaded[key]
        if len(dataset) == 0:
            raise PipelineError(f"{where}: the dataset is empty")
        indices = _chosen(len(dataset), entry, seed)
        files = getattr(dataset, "samples", None)  # ImageFolder's (path, label) list: check the files it will read
        if isinstance(files, list):
            verify_images((files[i][0] for i in indices), f"data.{role}")
        samples = LabeledSamples(dataset if len(indices) == len(dataset) else Subset(dataset, indices), where)
        classes = getattr(dataset, "classes", None)
        sets[role] = DataSet(
            role=role,
            spec=entry,
            samples=samples,
            loader=_loader(samples, entry, role, spec.num_workers, seed),
            classes=list(classes) if classes is not None else None,
            details={
                "source": entry.source,
                **source_details,
                "samples": len(samples),
                "batch_size": entry.batch_size,
                **({"classes": len(classes)} if classes is not None else {}),
            },
        )
        sets[role].first_sample()  # a sample the transform cannot make, or of the wrong kind, fails here
    _check_same_classes(sets)
    return PipelineData(sets)


def _check_same_classes(sets: dict[str, DataSet]) -> None:
    """Label ``i`` means one class in every entry that names its classes (image folders): where two
    entries both have label ``i``, its class name is the same. (An entry may have fewer classes: train
    on folders 0 to 3 of 10; a shifted list is refused: train ``a``-``j`` against eval ``0``-``9``.)

    Raises:
        PipelineError: naming both entries, their classes and the first label that differs.
    """
    named = [(data_set, data_set.classes) for data_set in sets.values() if data_set.classes is not None]
    for other, classes in named[1:]:
        first, reference = named[0]
        differ = next((i for i, (a, b) in enumerate(zip(reference, classes, strict=False)) if a != b), None)
        if differ is not None:
            raise PipelineError(
                f"{other.option} ({other.spec.source}) has the classes {_names(classes)} but {first.option} has "
                f"{_names(reference)}; the same label would mean different classes (label {differ} is "
                f"{classes[differ]!r} in one, {reference[differ]!r} in the other): give both the same class folders"
            )


def _names(classes: list[str], shown: int = 5) -> str:
    return ", ".join(classes[:shown]) + (", ..." if len(classes) > shown else "")


def _chosen(size: int, entry: DatasetSpec, seed: int) -> list[int]:
    """The indices ``limit`` keeps: the first ``limit``, or a seeded random subset with ``shuffle``."""
    if entry.limit is None or entry.limit >= size:
        return list(range(size))
    if entry.shuffle:
        generator = torch.Generator().manual_seed(seed)
        return sorted(torch.randperm(size, generator=generator)[: entry.limit].tolist())
    return list(range(entry.limit))


def _loader(samples: Dataset, entry: DatasetSpec, role: str, num_workers: int, seed: int) -> DataLoader:
    # eval is read in order whatever `shuffle` says: agreement compares stages sample by sample.
    shuffle = entry.shuffle and role != "eval"
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(samples, batch_size=entry.batch_size, shuffle=shuffle, num_workers=num_workers, generator=generator)
