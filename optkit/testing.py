"""Pytest helpers for plugin authors: run a pass through the host, exactly as ``optkit run`` does.

A pass is run in a real pipeline (baseline, then the pass) on a small model; the host's checks
apply: the options are validated through the pipeline schema, a pass with
``preserves_outputs = True`` fails when outputs drift beyond the tolerance, the report is
written and must follow the ``report.json`` contract, and listed artifacts must exist::

    from optkit.testing import run_pass

    def test_strip_dropout(tmp_path):
        run = run_pass("strip_dropout", {"kinds": ["Dropout"]}, tmp_path=tmp_path,
                       source="torchvision:mobilenet_v3_small")
        assert run.stage["details"]["count"] == 1
        assert run.drift["max_abs"] == 0.0

A pass class not installed through an entry point yet can be passed directly:
``run_pass(MyPass, tmp_path=tmp_path)``. With ``pytest_plugins = ["optkit.testing"]`` in a
``conftest.py``, the ``optkit_run_pass`` fixture does the same with ``tmp_path`` filled in.

A model source or a dataset loader is called through the host as a run calls it, with
:func:`load_source` and :func:`load_dataset`, and the error contract of plugin code (see
:mod:`optkit.errors`) is asserted with :func:`raises_user_error` (the user's input is wrong: exit 2,
the entry named) and :func:`raises_plugin_bug` (anything else: exit 1, the plugin named)::

    def test_a_missing_file_is_the_users_error(tmp_path):
        with raises_user_error(r"^data.eval \\(npz:missing.npz\\): no such file"):
            load_dataset("npz:missing.npz", base_dir=tmp_path)

A pass that reads data (``ctx.data``) runs on a real data set and a real trained model: the digits
(:func:`digits_imagefolder`, or the ``optkit_digits`` fixture) and :func:`digits_cnn`::

    def test_calibrates(tmp_path, optkit_digits):
        run = run_pass("my_quantizer", tmp_path=tmp_path, source=DIGITS_MODEL, model_kwargs={"pretrained": True},
                       input_shape=(1, 3, 32, 32), dataset=optkit_digits.val)
        assert run.metrics["accuracy"]["top1"] > 0.95
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from optkit.config.data import DataSpec
from optkit.config.pipeline import ModelSpec, load_pipeline
from optkit.data import digits_cnn
from optkit.data.digits import DigitsFolders, digits_imagefolder
from optkit.data.loaders import DataSet
from optkit.errors import PipelineError, PluginBugError
from optkit.host.facade import Host
from optkit.host.hookspecs import hookimpl
from optkit.passes import Pass, check_pass_class
from optkit.results import RUN_STATUSES, SCHEMA_VERSION, STAGE_STATUSES, RunReport

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "TINY_MODEL",
    "DIGITS_MODEL",
    "digits_cnn",
    "digits_imagefolder",
    "optkit_digits",
    "REPORT_FIELDS",
    "STAGE_FIELDS",
    "METRIC_FIELDS",
    "LATENCY_FIELDS",
    "SPEEDUP_FIELDS",
    "PassRun",
    "tiny_convnet",
    "run_pass",
    "load_source",
    "load_dataset",
    "raises_user_error",
    "raises_plugin_bug",
    "check_report_contract",
    "optkit_run_pass",
]

#: The default model: :func:`tiny_convnet`, through the ``python:`` source.
TINY_MODEL = "python:optkit.testing:tiny_convnet"

#: The digits model (:func:`digits_cnn`; ``model_kwargs={"pretrained": True}`` for the trained
#: weights), through the ``python:`` source; it takes ``[N, 3, 32, 32]`` inputs in [0, 1].
DIGITS_MODEL = "python:optkit.testing:digits_cnn"

#: Fields of ``report.json`` (the models of :mod:`optkit.results`), top level.
REPORT_FIELDS = ("schema", "optkit_version", "environment", "pipeline", "status", "timing", "stages")
ENVIRONMENT_FIELDS = ("python", "torch", "torchvision", "device", "threads")
#: Fields of every stage.
STAGE_FIELDS = ("name", "pass", "status", "duration_s", "metrics", "details", "artifacts", "error")
#: Metrics every measured (``ok``) stage has; ``macs``/``gflops`` also need ``measure.flops``.
METRIC_FIELDS = ("params", "nonzero_params", "size_bytes")
LATENCY_FIELDS = ("p10", "p50", "p90", "p50_interval", "mean", "std", "n", "samples", "warmup", "runtime", "io", "compare")
#: Fields of a timed stage's ``speedup`` over the baseline.
SPEEDUP_FIELDS = ("value", "low", "high", "confidence", "paired", "tie", "against")
DRIFT_FIELDS = ("max_abs", "cosine")


def tiny_convnet(num_classes: int = 10, dropout: float = 0.0) -> nn.Module:
    """A small seeded classifier with the layers passes usually touch.

    Conv-BN-ReLU twice, global pooling, optional dropout, then a linear head: it runs in a few
    milliseconds on a ``[2, 3, 64, 64]`` batch and returns ``[batch, num_classes]`` logits.

    Args:
        num_classes: outputs of the head.
        dropout: probability of a ``nn.Dropout`` before the head (0 leaves it out).
    """
    import torch
    from torch import nn

    # The CPU generator only, restored afterwards: torch.manual_seed would reseed CUDA's too.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(0)
        layers: list[nn.Module] = [
            nn.Conv2d(3, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        ]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(32, num_classes))
        model = nn.Sequential(*layers)
    return model.eval()


@dataclass
class PassRun:
    """The outcome of :func:`run_pass`.

    Attributes:
        report: ``report.json`` as written to disk (a dict).
        run_dir: the run folder (report files, stage folders, ``model.pt``).
    """

    report: dict[str, Any]
    run_dir: Path

    @property
    def stage(self) -> dict[str, Any]:
        """The stage of the pass under test (the last one)."""
        return self.report["stages"][-1]

    @property
    def baseline(self) -> dict[str, Any]:
        return self.report["stages"][0]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.stage["metrics"]

    @property
    def drift(self) -> dict[str, Any]:
        """The pass's output drift against the baseline: ``max_abs``, ``cosine``, ``top1_agreement``."""
        return self.metrics["drift"]

    @property
    def error(self) -> str | None:
        """The stage's error as ``optkit run`` prints it (``stage 1 (my_pass) failed: ...``), or ``None``."""
        return self.stage["error"]

    def artifact(self, filename: str) -> Path:
        """The path of the stage artifact named ``filename``."""
        for relative in self.stage["artifacts"]:
            if Path(relative).name == filename:
                return self.run_dir / relative
        raise AssertionError(f"no artifact {filename!r} in {self.stage['artifacts']}")

    def load_model(self) -> nn.Module:
        """The final module the run saved as ``model.pt``."""
        import torch

        # model.pt is a whole pickled module this very run just wrote, so unpickling it is safe.
        return torch.load(self.run_dir / "model.pt", weights_only=False)


def _plugin_for(pass_cls: type[Pass]) -> object:
    """An in-process plugin that registers ``pass_cls`` (for passes not installed yet)."""

    class _SinglePassPlugin:
        __name__ = f"optkit.testing:{pass_cls.__name__}"

        @hookimpl
        def optkit_register_passes(self, register: Callable[[type[Pass]], None]) -> None:
            register(pass_cls)

    return _SinglePassPlugin()


def run_pass(
    pass_ref: str | type[Pass],
    options: dict[str, Any] | None = None,
    *,
    tmp_path: Path,
    plugins: Iterable[object] = (),
    source: str = TINY_MODEL,
    input_shape: Iterable[int] = (2, 3, 64, 64),
    inputs: list[dict[str, Any]] | dict[str, dict[str, Any]] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    before: Iterable[str | dict[str, Any]] = (),
    measure: dict[str, Any] | None = None,
    expect_status: str = "ok",
    dataset: str | Path | None = None,
    data: dict[str, Any] | None = None,
) -> PassRun:
    """Run one pass through the host in a pipeline on a small model and check what the host checks.

    Args:
        pass_ref: the pass's name (installed, or registered by ``plugins``) or its class.
        options: the stage's options, as a pipeline file would give them.
        tmp_path: the folder for the pipeline file and the run (pytest's ``tmp_path``); created
            with its parents when missing.
        plugins: extra in-process plugins (modules or objects with ``@hookimpl`` functions).
        source: the model source (default: :func:`tiny_convnet`); e.g. ``torchvision:resnet18``.
        input_shape: the measured batch; small keeps tests fast.
        inputs: ``model.inputs`` for a model of several or integer inputs (instead of ``input_shape``).
        model_kwargs: keyword arguments for the model builder (``model.kwargs``).
        before: stages to run before the pass (names or ``{name: options}``).
        measure: the pipeline's ``measure:`` section (default: 1 warm-up, 3 timed runs).
        expect_status: ``ok`` (default) or ``failed``: the status the pass's stage must end with.
        dataset: an image folder (one sub-folder per class) or a data source (``python:pkg.mod:fn``)
            used as ``data.eval`` and ``data.train`` (and so calibration): every stage gets accuracy
            and agreement, and the pass reads it through ``ctx.data``.
        data: the pipeline's whole ``data:`` section, as a file would give it (instead of ``dataset``).

    Returns:
        The report as written to disk and the run folder.

    Raises:
        optkit.errors.PipelineError: the options or the pass name are wrong (as ``optkit validate``
            would say).
        AssertionError: the stage ended otherwise than ``expect_status`` (with its error), the
            report breaks the contract, or a listed artifact is missing.
    """
    from optkit.run.runner import run_pipeline  # imports torch: only when a pass is run

    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    extra = list(plugins)
    if isinstance(pass_ref, str):
        name = pass_ref
    else:
        name = check_pass_class(pass_ref, f"optkit.testing: {pass_ref.__qualname__}")
        extra.append(_plugin_for(pass_ref))
    host = Host.with_plugins(*extra)
    stage = {name: options} if options is not None else name
    document = {
        "model": {
            "source": source,
            **({"inputs": inputs} if inputs is not None else {"input_shape": list(input_shape)}),
            "kwargs": model_kwargs or {},
        },
        "device": "cpu",
        "measure": measure if measure is not None else {"warmup": 1, "iters": 3},
        "passes": [*before, stage],
        "output": str(tmp_path / "run"),
    }
    if data is not None and dataset is not None:
        raise ValueError("give dataset or data, not both")
    if dataset is not None:
        given = str(dataset)
        source_text = given if ":" in given and not Path(given).exists() else f"imagefolder:{Path(given).resolve()}"
        data = {"eval": source_text, "train": source_text}
    if data is not None:
        document["data"] = data
    pipeline_path = tmp_path / "pipeline.yaml"
    pipeline_path.write_text(yaml.safe_dump(document, sort_keys=False))
    pipeline = load_pipeline(pipeline_path, host.get_pass, host.get_source, producers=host.passes_producing, get_dataset=host.get_dataset)
    _, run_dir = run_pipeline(pipeline, host)  # a second run in one tmp_path goes to run-2
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"), parse_constant=_not_json)
    check_report_contract(report)
    run = PassRun(report, run_dir)
    if run.stage["status"] != expect_status:
        raise AssertionError(
            f"stage {name!r} ended {run.stage['status']!r}, expected {expect_status!r}: {run.stage['error'] or report.get('error')}"
        )
    for relative in run.stage["artifacts"]:
        if not (run_dir / relative).is_file():
            raise AssertionError(f"stage {name!r} lists artifact {relative} but it is not on disk")
    return run


def load_source(
    source: str, *, base_dir: Path | None = None, plugins: Iterable[object] = (), kwargs: dict[str, Any] | None = None
) -> nn.Module:
    """Build ``model.source: SOURCE`` through the host, as a run does (the installed plugins and ``plugins``).

    Args:
        source: ``scheme:target``.
        base_dir: the folder relative paths resolve against (a pipeline file's folder); default: the current one.
        plugins: extra in-process plugins (modules or objects with ``@hookimpl`` functions).
        kwargs: ``model.kwargs``.

    Raises:
        PipelineError: the source is refused (an unknown scheme, a loader's own refusal), ``model.source`` named.
        PluginBugError: the loader raised anything else (a bug in its plugin, named).
    """
    spec = ModelSpec.model_validate({"source": source, "kwargs": kwargs or {}})
    model, _ = Host.with_plugins(*plugins).load_model(spec, Path(base_dir) if base_dir is not None else Path.cwd())
    return model


def load_dataset(
    source: str,
    *,
    base_dir: Path | None = None,
    plugins: Iterable[object] = (),
    role: str = "eval",
    kwargs: dict[str, Any] | None = None,
    transform: dict[str, Any] | None = None,
) -> DataSet:
    """Load the ``data:`` entry ``{ROLE: {source: SOURCE, kwargs: KWARGS}}`` through the host, as a run
    does: the loader is found by scheme, called, and every file it lists is checked.

    Args:
        source: ``scheme:target``.
        base_dir: the folder relative paths resolve against (``request.base_dir``); default: the current one.
        plugins: extra in-process plugins (modules or objects with ``@hookimpl`` functions).
        role: ``eval``, ``train`` or ``calibration``.
        kwargs: the entry's ``kwargs``.
        transform: the ``data.transform`` section (``{resize: 36, center_crop: 32}``).

    Returns:
        The loaded entry: ``samples`` (``(input, label)`` pairs), ``classes``, ``details``, ``loader``.

    Raises:
        PipelineError: the entry is refused (an unknown scheme, a loader's own refusal), ``data.ROLE`` named.
        PluginBugError: the loader raised anything else (a bug in its plugin, named).
    """
    spec = DataSpec.model_validate({role: {"source": source, "kwargs": kwargs or {}}, "transform": transform or {}})
    data = Host.with_plugins(*plugins).load_data(spec, Path(base_dir) if base_dir is not None else Path.cwd())
    return data.get(role)  # type: ignore[return-value]


@contextmanager
def raises_user_error(match: str | None = None) -> Iterator[pytest.ExceptionInfo[PipelineError]]:
    """Assert that the block refuses the user's input as the contract says: a
    :class:`~optkit.errors.PipelineError` (``optkit run`` exits 2), whose message is one line and
    matches ``match`` (``re.search``).

    Yields:
        pytest's ``ExceptionInfo``, filled when the block ends.
    """
    with pytest.raises(PipelineError) as info:
        yield info
    _check_contract(info.value, 2, match)


@contextmanager
def raises_plugin_bug(plugin: str, match: str | None = None) -> Iterator[pytest.ExceptionInfo[PluginBugError]]:
    """Assert that the block fails as a bug in plugin code: a :class:`~optkit.errors.PluginBugError`
    (``optkit run`` exits 1) whose one-line message names ``plugin`` (its entry-point or
    distribution name) and matches ``match`` (``re.search``).

    Yields:
        pytest's ``ExceptionInfo``, filled when the block ends.
    """
    with pytest.raises(PluginBugError) as info:
        yield info
    _check_error(plugin in str(info.value), f"{str(info.value)!r} does not name the plugin {plugin!r}")
    _check_contract(info.value, 1, match)


def _check_contract(error: PipelineError | PluginBugError, exit_code: int, match: str | None) -> None:
    """The error's exit code, a one-line message, and ``match`` found in it (``re.search``)."""
    message = str(error)
    _check_error(error.exit_code == exit_code, f"{type(error).__name__} exits {error.exit_code}, not {exit_code}")
    _check_error("\n" not in message, f"the message is not one line: {message!r}")
    _check_error(match is None or re.search(match, message) is not None, f"{message!r} does not match {match!r}")


def _check_error(condition: bool, message: str) -> None:
    """``assert`` for the error contract, kept under ``python -O``."""
    if not condition:
        raise AssertionError(f"error contract: {message}")


def check_report_contract(report: dict[str, Any]) -> None:
    """Assert that a ``report.json`` dict fits the report models (:class:`optkit.results.RunReport`)
    and has the fields of the contract.

    It validates against the same models that write and read reports, in the current schema; every
    stage has the stage fields; every ``ok`` stage has parameters, size, latency (when
    measured, with its spread) and drift (the baseline's is the identity: it is the reference);
    every timed stage after a timed baseline has its ``speedup`` with an interval.

    Raises:
        AssertionError: naming the first missing field and the stage.
    """
    from pydantic import ValidationError

    _require(report, REPORT_FIELDS, "report")
    _check(report["schema"] == SCHEMA_VERSION, f"schema {report['schema']!r}, not this optkit's {SCHEMA_VERSION}")
    try:
        RunReport.model_validate(report)
    except ValidationError as exc:
        first = exc.errors()[0]
        _check(False, f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']} (of {exc.error_count()} errors)")
    _require(report["environment"], ENVIRONMENT_FIELDS, "environment")
    _require(report["pipeline"], ("path", "model"), "pipeline")
    _require(report["pipeline"]["model"], ("source", "input_shape"), "pipeline.model")
    _check(report["status"] in RUN_STATUSES and report["status"] != "running", f"report status {report['status']!r}")
    _check(bool(report["stages"]) and report["stages"][0]["name"] == "baseline", "the first stage is the baseline")
    for stage in report["stages"]:
        where = f"stage {stage.get('name')!r}"
        _require(stage, STAGE_FIELDS, where)
        _check(stage["status"] in STAGE_STATUSES, f"{where}: status {stage['status']!r}")
        if stage["status"] != "ok":
            _check(stage["status"] == "skipped" or bool(stage["error"]), f"{where}: {stage['status']} without an error")
            continue
        metrics = stage["metrics"]
        _require(metrics, METRIC_FIELDS, f"{where} metrics")
        if "latency_ms" in metrics:
            _require(metrics["latency_ms"], LATENCY_FIELDS, f"{where} latency_ms")
            if stage is not report["stages"][0] and "latency_ms" in report["stages"][0]["metrics"]:
                _require(metrics, ("speedup",), f"{where} metrics")
                _require(metrics["speedup"], SPEEDUP_FIELDS, f"{where} speedup")
        _require(metrics, ("drift",), f"{where} metrics")
        if metrics["drift"].get("comparable", True):
            _require(metrics["drift"], DRIFT_FIELDS, f"{where} drift")
        if "accuracy" in metrics:
            _require(metrics["accuracy"], ("top1", "n"), f"{where} accuracy")
        if "agreement" in metrics and metrics["agreement"].get("comparable", True):
            _require(metrics["agreement"], ("top1", "n"), f"{where} agreement")


def _not_json(token: str) -> float:
    """``json.loads``'s hook for ``NaN``/``Infinity``: report.json writes them as null."""
    raise AssertionError(f"report.json: {token} is not JSON (a figure that is not finite is written as null)")


def _check(condition: bool, message: str) -> None:
    """``assert``, kept under ``python -O`` (which removes assert statements)."""
    if not condition:
        raise AssertionError(f"report.json: {message}")


def _require(mapping: dict[str, Any], fields: Iterable[str], where: str) -> None:
    missing = [f for f in fields if f not in mapping]
    _check(not missing, f"{where} lacks {', '.join(missing)}")


@pytest.fixture(scope="session")
def optkit_digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsFolders:
    """The digits as an ImageFolder (32×32 RGB; ``.train``, ``.val``), written once per test session."""
    return digits_imagefolder(tmp_path_factory.mktemp("digits") / "digits", size=32)


@pytest.fixture
def optkit_run_pass(tmp_path: Path) -> Callable[..., PassRun]:
    """:func:`run_pass` with ``tmp_path`` filled in: ``optkit_run_pass("my_pass", {"k": 1})``."""

    def run(pass_ref: str | type[Pass], options: dict[str, Any] | None = None, **kwargs: Any) -> PassRun:
        return run_pass(pass_ref, options, tmp_path=tmp_path, **kwargs)

    return run
