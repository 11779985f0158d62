"""`optkit optimize`: its settings, the candidate chains built from the passes' declared options,
the Pareto front, the stage cache, and a search on the digits model whose chosen.yaml reproduces it."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from optkit.config.optimize import PRUNE_LADDER, OptimizeSpec
from optkit.config.pipeline import load_pipeline, parse_pipeline
from optkit.errors import PipelineError
from optkit.host.facade import Host
from optkit.optimize.cache import StageCache, model_hash, prefix_key
from optkit.optimize.candidates import INT8_OPTIONS, Step, chain_name, generate_chains, prune_targets
from optkit.optimize.pareto import pareto_front
from optkit.optimize.settings import merged_settings
from optkit.sweep.jobs import Job, JobOutcome


@pytest.fixture(scope="module")
def host() -> Host:
    return Host()


PIPELINE = """
model: {{source: "python:optkit.data:digits_cnn", kwargs: {{pretrained: true}}, input_shape: [1, 3, 32, 32]}}
device: cpu
measure: {{warmup: 1, iters: 5, threads: 1}}
data:
  root: {root}
  eval: {{source: "imagefolder:val", batch_size: 120}}
optimize:
  max_accuracy_drop: 0.02
  runtime: torch
  prune_targets: [0.5]
  budget_minutes: 5
{extra}
"""


def _pipeline_text(root: Path, extra: str = "") -> str:
    return textwrap.dedent(PIPELINE).format(root=root, extra=extra)


# --- settings ------------------------------------------------------------------------------------


def test_the_optimize_section_is_validated_with_the_pipeline(host: Host, tmp_path: Path) -> None:
    pipeline = parse_pipeline(_pipeline_text(tmp_path), host.get_pass)
    assert pipeline.spec.optimize is not None
    assert (pipeline.spec.optimize.max_accuracy_drop, pipeline.spec.optimize.runtime) == (0.02, "torch")


@pytest.mark.parametrize(
    ("extra", "named"),
    [("  target: speed", "optimize.target"), ("  workers: 0", "optimize.workers"), ("  no_such: 1", "optimize.no_such")],
)
def test_a_bad_optimize_option_is_one_line_naming_it_and_its_line(host: Host, tmp_path: Path, extra: str, named: str) -> None:
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(_pipeline_text(tmp_path, extra), host.get_pass, path=tmp_path / "p.yaml")
    message = str(caught.value)
    assert named in message and "\n" not in message
    assert "p.yaml:13" in message  # the line of the bad key (the 13th of the file)


def test_command_line_options_override_the_section_and_bad_ones_name_the_option() -> None:
    section = OptimizeSpec(max_accuracy_drop=0.05, budget_minutes=3)
    merged = merged_settings(section, {"max_accuracy_drop": None, "budget_minutes": 7.0, "runtime": "torch"})
    assert (merged.max_accuracy_drop, merged.budget_minutes, merged.runtime) == (0.05, 7.0, "torch")
    with pytest.raises(PipelineError, match=r"^--cache-size-mb: "):
        merged_settings(None, {"cache_size_mb": 0})


# --- candidates ----------------------------------------------------------------------------------


def test_chains_come_from_the_registered_passes_and_their_options(host: Host) -> None:
    spec = OptimizeSpec(prune_targets=[0.5, 0.25])
    chains = generate_chains(spec, host.get_pass, has_train=True)
    names = {chain_name(c) for c in chains}
    # 2 targets x (pruned, pruned+finetuned) + unpruned = 5 heads; x (fuse or not) x (int8 or not) = 20.
    assert len(chains) == len(names) == 20
    assert {"onnx", "fuse+onnx+int8", "prune-macs0.25+finetune5+fuse+onnx+int8", "prune-macs0.5+onnx"} <= names
    for chain in chains:
        for step in chain:  # every stage validates against its pass's declared Options
            host.get_pass(step.pass_name).Options.model_validate(step.option_dict)
        assert chain[-1].pass_name in ("export_onnx", "quantize_onnx")
    int8 = next(step for chain in chains for step in chain if step.pass_name == "quantize_onnx")
    assert int8.option_dict == INT8_OPTIONS


def test_without_train_data_or_with_torch_there_is_no_finetune_or_export(host: Host) -> None:
    chains = generate_chains(OptimizeSpec(runtime="torch", target="size", prune_targets=[0.3]), host.get_pass, has_train=False)
    assert sorted(chain_name(c) for c in chains) == ["fuse", "prune-params0.3", "prune-params0.3+fuse"]


def test_a_pass_that_refuses_the_options_is_left_out(host: Host) -> None:
    def get_pass(name: str) -> Any:
        if name == "prune_channels":
            return host.get_pass("fuse_bn")  # its Options declare no `target`
        return host.get_pass(name)

    chains = generate_chains(OptimizeSpec(runtime="torch"), get_pass, has_train=True)
    assert [chain_name(c) for c in chains] == ["fuse"]


def test_a_larger_budget_keeps_the_smaller_budgets_targets() -> None:
    small, large = prune_targets(OptimizeSpec(budget_minutes=2)), prune_targets(OptimizeSpec(budget_minutes=60))
    assert small == list(PRUNE_LADDER[: len(small)]) and large[: len(small)] == small and len(large) > len(small)


# --- Pareto front --------------------------------------------------------------------------------


def test_pareto_front_of_latency_and_accuracy() -> None:
    points = {"a": (1.0, 0.90), "b": (2.0, 0.95), "c": (3.0, 0.94), "d": (0.5, 0.80), "e": (2.0, 0.95), "f": (4.0, None)}
    front = pareto_front(list(points), [(lambda n: points[n][0], "min"), (lambda n: points[n][1], "max")])
    # c is beaten by b (faster and more accurate); f has no accuracy; b and e are equal: both stay.
    assert front == ["a", "b", "d", "e"]


def test_pareto_front_in_three_objectives() -> None:
    points = {"x": (1, 0.9, 10), "y": (1, 0.9, 5), "z": (2, 0.95, 50)}
    front = pareto_front(list(points), [(lambda n: points[n][0], "min"), (lambda n: points[n][1], "max"), (lambda n: points[n][2], "min")])
    assert front == ["y", "z"]


# --- cache ---------------------------------------------------------------------------------------


def test_cache_keys_change_with_the_model_the_prefix_and_the_data() -> None:
    prefix = [Step.of("prune_channels", {"target": {"macs": 0.5}}).as_pass_item()]
    key = prefix_key("m", prefix, {"eval": "a"}, "cpu")
    assert key == prefix_key("m", prefix, {"eval": "a"}, "cpu")
    assert (
        len(
            {
                key,
                prefix_key("m2", prefix, {"eval": "a"}, "cpu"),
                prefix_key("m", [], {"eval": "a"}, "cpu"),
                prefix_key("m", prefix, {"eval": "b"}, "cpu"),
            }
        )
        == 4
    )


def test_model_hash_follows_the_weights() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    before = model_hash(model, {"source": "x"})
    assert before == model_hash(model, {"source": "x"}) and before != model_hash(model, {"source": "y"})
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1e-3
    assert model_hash(model, {"source": "x"}) != before


def test_how_many_jobs_fit_is_judged_by_the_rungs_own_jobs(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from optkit.optimize.jobs import PrefixRunner

    runner = PrefixRunner(
        pipeline=None,  # type: ignore[arg-type]  # affordable() reads only the clock, the executor and the job times
        model_id="m",
        cache=None,  # type: ignore[arg-type]
        executor=SimpleNamespace(workers=1),  # type: ignore[arg-type]
        folder=tmp_path,
        deadline=time.monotonic() + 105,
        baseline_needs={},
    )
    runner.job_seconds = {"prune": [10.0, 10.0], "export": [60.0]}
    # Pruning jobs took 10 s, export jobs 60 s: 10 of the first fit in 105 s, one of the second;
    # a rung with no job yet is judged by every job so far (mean 26.7 s: 3).
    assert (runner.affordable(20, "prune"), runner.affordable(20, "export"), runner.affordable(20, "finetune")) == (10, 1, 3)
    assert runner.affordable(2, "prune") == 2


def test_cache_evicts_the_least_recently_used_entries_beyond_its_size(tmp_path: Path) -> None:
    blob = tmp_path / "model.pt"
    blob.write_bytes(b"x" * 4000)
    cache = StageCache(tmp_path / "cache", limit_bytes=10_000)
    for name in ("a", "b"):
        cache.put(name, blob, 1, {"macs": 1}, [])
        time.sleep(0.02)
    assert cache.get("a") is not None  # a is now the most recently used
    time.sleep(0.02)
    cache.put("c", blob, 1, {"macs": 2}, [])
    assert cache.evicted == ["b"]
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.get("c").metrics == {"macs": 2}  # type: ignore[union-attr]


# --- a search on the digits model ----------------------------------------------------------------


class InProcessExecutor:
    """Runs each job's pipeline in this process (no interpreter start per job: the test stays fast)."""

    name = "in-process"
    workers = 1

    def __init__(self) -> None:
        self.jobs: list[str] = []

    def run(self, jobs: list[Job], on_done: Any) -> list[JobOutcome]:
        from optkit.run.runner import run_pipeline

        outcomes = []
        for job in jobs:
            self.jobs.append(job.pipeline)
            Path(job.pipeline_file).parent.mkdir(parents=True, exist_ok=True)
            Path(job.pipeline_file).write_text(job.pipeline_yaml)
            report, _ = run_pipeline(Path(job.pipeline_file), output=Path(job.run_dir), overwrite=True)
            outcome = JobOutcome(job, report.status.value, json.loads(report.to_json()), report.error, 1.0)
            on_done(outcome)
            outcomes.append(outcome)
        return outcomes


def _search(pipeline_file: Path, out: Path, executor: InProcessExecutor, **settings: Any) -> Any:
    from optkit.optimize.search import optimize

    host = Host()
    pipeline = load_pipeline(pipeline_file, host.get_pass)
    assert pipeline.spec.optimize is not None
    spec = pipeline.spec.optimize.model_copy(update=settings)
    return optimize(pipeline, spec, executor, out, host=host)


@pytest.fixture(scope="module")
def digits_pipeline(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("optimize")
    path = folder / "digits.yaml"
    path.write_text(_pipeline_text(digits.root))
    return path


@pytest.mark.slow  # three searches' worth of digits runs: minutes on two busy cores
def test_a_second_search_reuses_the_first_ones_stages_and_chosen_yaml_reproduces_the_choice(digits_pipeline: Path, tmp_path: Path) -> None:
    from optkit.optimize.report import write_optimize_report
    from optkit.run.runner import run_pipeline

    first = _search(digits_pipeline, tmp_path / "out", InProcessExecutor())
    # Chains: prune-macs0.5 (+fuse), fuse; the baseline and the pruned model are computed once each.
    assert sorted(c.name for c in first.candidates) == ["fuse", "prune-macs0.5", "prune-macs0.5+fuse"]
    assert first.stages_reused == 0 and first.stages_computed >= 3
    second_executor = InProcessExecutor()
    second = _search(digits_pipeline, tmp_path / "out", second_executor, prune_targets=[0.5, 0.25])
    # The first search's baseline, pruned model and fused chains come back from the cache; only the new target is computed.
    assert second.stages_reused >= 3
    assert all("0.25" in job for job in second_executor.jobs)
    written = write_optimize_report(second)
    assert written["plot"].read_bytes()[:4] == b"\x89PNG"
    summary = json.loads(written["json"].read_text())
    assert summary["stages_reused"] == second.stages_reused and summary["pareto_front"]
    assert "Pareto front" in written["markdown"].read_text() and "<img" in written["html"].read_text()

    chosen = second.chosen
    if chosen is None:  # no candidate was faster beyond doubt on this machine (fuse_bn alone may tie): nothing to reproduce
        assert all(((c.speedup or {}).get("low") or 0) <= 1 for c in second.candidates if c.status == "timed")
        return
    document = yaml.safe_load((tmp_path / "out" / "chosen.yaml").read_text())
    assert document["passes"] == [step.as_pass_item() for step in chosen.chain]
    report, _ = run_pipeline(tmp_path / "out" / "chosen.yaml")
    final = report.stages[-1].metrics
    assert final.macs == chosen.macs
    assert final.accuracy is not None and chosen.top1 is not None
    assert abs(final.accuracy.top1 - chosen.top1) <= 1 / final.accuracy.n + 1e-9  # one sample at most, as kernels round


def test_a_model_without_data_is_refused_in_one_line_and_model_flags_need_a_model(digits_pipeline: Path, tmp_path: Path, cli) -> None:
    result = cli("optimize", "torchvision:resnet18", "--out", tmp_path / "out")
    assert result.exit_code != 0 and "give --data" in result.output and not (tmp_path / "out").exists()
    result = cli("optimize", digits_pipeline, "--data", tmp_path)
    assert result.exit_code == 2 and "--data: only with a MODEL" in result.output


def test_model_pipeline_makes_folders_absolute_and_keeps_other_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from optkit.optimize.settings import model_pipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "val").mkdir()
    document = model_pipeline("torchvision:resnet18", "val", train="imagefolder:train", input_shape=[1, 3, 64, 64], weights="none")
    assert document["model"] == {"source": "torchvision:resnet18", "input_shape": [1, 3, 64, 64], "weights": "none"}
    assert document["data"]["eval"]["source"] == f"imagefolder:{tmp_path / 'val'}"
    assert document["data"]["train"] == {"source": f"imagefolder:{tmp_path / 'train'}", "shuffle": True}
    assert model_pipeline("hf:bert", "python:my.mod:ds")["data"]["eval"]["source"] == "python:my.mod:ds"
    assert model_pipeline("hf:bert", "python:my.mod:ds")["output"] == "runs/bert"


@pytest.mark.slow  # one search through the command line, its jobs as Ray tasks
def test_a_model_named_on_the_command_line_searched_with_ray_on_unlabeled_data(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import optkit.data

    # Ray's workers and each job import python:optimize_toys from here.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])))
    weights = Path(optkit.data.__file__).parent / "digits_cnn.safetensors"  # the shipped, trained weights
    out = tmp_path / "opt"
    result = cli(
        "optimize", "python:optkit.data:digits_cnn", "--weights", weights, "--data", "python:optimize_toys:unlabeled_digits",
        "--input-shape", "1,3,32,32", "--runtime", "torch", "--budget-minutes", "3", "--executor", "ray", "--workers", "2",
        "--no-cache", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((out / "pipeline.yaml").read_text())  # what the search ran from
    assert written["model"]["source"] == "python:optkit.data:digits_cnn" and written["data"]["eval"]["source"] == "python:optimize_toys:unlabeled_digits"
    summary = json.loads((out / "optimize.json").read_text())
    assert summary["settings"]["executor"] == "ray" and summary["stages_computed"] >= 3
    # Labels -1: the budget is top-1 agreement with the eager model.
    assert summary["judged_by"] == "agreement" and summary["baseline"]["top1"] == 1.0 and "agreement" in result.output
    by_name = {c["name"]: c for c in summary["candidates"]}
    assert by_name["fuse"]["status"] == "timed" and by_name["fuse"]["top1"] >= 0.98
    # Halving the MACs without fine-tuning changes most of the trained CNN's predictions: over the budget.
    pruned = by_name["prune-macs0.5"]
    assert pruned["top1"] is not None and pruned["top1"] < 0.9 and pruned["status"] == "over budget"
    # Each candidate's pipeline file times with the threads the search timed with (one: measure.threads unset).
    assert yaml.safe_load(Path(by_name["fuse"]["pipeline_file"]).read_text())["measure"]["threads"] == 1


def test_optimize_without_eval_data_is_refused(host: Host, tmp_path: Path) -> None:
    from optkit.optimize.search import optimize

    path = tmp_path / "p.yaml"
    path.write_text("model: {source: 'python:optkit.data:digits_cnn', input_shape: [1, 3, 32, 32]}\ndevice: cpu\n")
    pipeline = load_pipeline(path, host.get_pass)
    with pytest.raises(PipelineError, match=r"needs data\.eval"):
        optimize(pipeline, OptimizeSpec(), InProcessExecutor(), tmp_path / "out", host=host)
