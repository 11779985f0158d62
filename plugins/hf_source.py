"""The ``hf:`` model source: Hugging Face transformers models built locally, never downloaded.

``hf:path/to/dir`` builds from a folder with ``config.json`` (and its weights when the folder has
them), ``hf:path/to/config.json`` from a config file (random weights), and ``hf:MODEL_TYPE`` (e.g.
``hf:bert``) from ``model.kwargs.config``, a mapping of config fields (which also override the
config of a folder or file). ``model.kwargs.task`` picks the head (``sequence-classification``
by default). Every lookup is local (``local_files_only``): optkit never downloads a model.

The model is wrapped so that it returns its first output (logits, or the last hidden state of a
headless model), which every measurement compares. Unless the pipeline file gives
``model.inputs``, the example inputs are ``input_ids`` (int64, ``[1, 128]``, values in
``[0, vocab_size)``) and ``attention_mask`` (all ones) for a text model, or ``pixel_values``
(float32, ``[1, channels, image_size, image_size]``) for a vision model, passed by keyword.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optkit import ExampleInputs, InputDef, PipelineError, SourceRequest

__all__ = ["TASKS", "FirstOutput", "load_hf", "default_inputs"]

#: ``model.kwargs.task`` → the transformers auto class that builds it.
TASKS = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "masked-lm": "AutoModelForMaskedLM",
    "causal-lm": "AutoModelForCausalLM",
    "image-classification": "AutoModelForImageClassification",
    "base": "AutoModel",
}
#: The sequence length of the default text inputs (shorter when the model's positions are fewer).
SEQUENCE_LENGTH = 128
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class FirstOutput(nn.Module):
    """A transformers model returning only its first output (logits, or the last hidden state)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model(*args, **kwargs, return_dict=True)[0]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise PipelineError("model.source: hf: sources need transformers: pip install 'optkit[hf]'") from exc
    return transformers


def _config(request: SourceRequest, transformers: Any, overrides: dict[str, Any]) -> tuple[Any, Path | None]:
    """The model's config and the folder its weights are in (``None``: random weights)."""
    target = request.target
    path = request.resolve(target)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PipelineError(f"model.source: {target} is a folder without config.json")
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, **overrides)
        return config, path if any((path / name).is_file() for name in _WEIGHT_FILES) else None
    if target.endswith(".json"):
        if not path.is_file():
            raise PipelineError(f"model.source: config file {path} does not exist")
        fields = {**json.loads(path.read_text(encoding="utf-8")), **overrides}
    elif overrides:
        fields = {"model_type": target, **overrides}
    else:
        raise PipelineError(
            f"model.source: hf:{target} is neither a folder nor a .json config file; for a config written in the "
            f"pipeline, give the model type (hf:bert) and model.kwargs.config: {{hidden_size: 32, ...}}"
        )
    model_type = fields.pop("model_type", None)
    if model_type is None:
        raise PipelineError(f"model.source: the config of hf:{target} has no model_type (bert, vit, ...)")
    try:
        return transformers.AutoConfig.for_model(model_type, **fields), None
    except ValueError as exc:  # an unknown model type
        raise PipelineError(f"model.source: hf:{target}: {exc}") from exc


def default_inputs(config: Any) -> list[InputDef]:
    """The example inputs of a model of ``config``: token ids and a mask for a text model, pixels for a vision model.

    Raises:
        PipelineError: the config says neither (the pipeline file must then give ``model.inputs``).
    """
    vocab = getattr(config, "vocab_size", None)
    if vocab:
        length = min(SEQUENCE_LENGTH, getattr(config, "max_position_embeddings", SEQUENCE_LENGTH) or SEQUENCE_LENGTH)
        return [
            InputDef("input_ids", (1, length), torch.int64, 0, vocab, keyword=True),
            InputDef("attention_mask", (1, length), torch.int64, 1, 2, keyword=True),
        ]
    size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", None)
    if size and channels:
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return [InputDef("pixel_values", (1, channels, height, width), torch.float32, keyword=True)]
    raise PipelineError(
        f"model.source: optkit knows no default inputs for a {type(config).__name__} (no vocab_size, no image_size); give model.inputs"
    )


def load_hf(request: SourceRequest) -> nn.Module:
    """``hf:FOLDER``, ``hf:CONFIG.json`` or ``hf:MODEL_TYPE`` with ``model.kwargs.config`` (see the module docstring).

    Raises:
        PipelineError: transformers is missing, the folder or file is not there, the config is
            incomplete, ``task`` is unknown, or other keyword arguments are given.
    """
    transformers = _transformers()
    kwargs = dict(request.spec.kwargs)
    task = kwargs.pop("task", "sequence-classification")
    overrides = kwargs.pop("config", None) or {}
    attention = kwargs.pop("attn_implementation", "eager")  # plain matrix products: counted, exported and pruned like any other
    if kwargs:
        raise PipelineError(f"model.kwargs: hf: sources take task, config and attn_implementation, not {', '.join(sorted(kwargs))}")
    if task not in TASKS:
        raise PipelineError(f"model.kwargs.task: {task!r} is not one of {', '.join(TASKS)}")
    if not isinstance(overrides, dict):
        raise PipelineError("model.kwargs.config: expected a mapping of config fields")
    config, weights = _config(request, transformers, overrides)
    auto = getattr(transformers, TASKS[task])
    if weights is not None:
        model = auto.from_pretrained(str(weights), config=config, local_files_only=True, attn_implementation=attention)
    else:
        model = auto.from_config(config, attn_implementation=attention)
    request.details["source"] = {
        "hf": request.target,
        "task": task,
        "class": type(model).__name__,
        "weights": str(weights) if weights else None,
    }
    if not request.spec.inputs_given:
        request.example_inputs = ExampleInputs.sample(default_inputs(config), seed=0)
    return FirstOutput(model.eval())
