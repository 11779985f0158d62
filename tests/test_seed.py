"""`seed:` seeds the model's construction too: two runs of a pipeline whose factory builds random
weights build the same model; another seed builds another one."""

from __future__ import annotations

import textwrap

import torch

from optkit.config.pipeline import load_pipeline
from optkit.run.runner import run_pipeline


def test_seed_makes_a_randomly_built_model_the_same_on_every_run(tmp_path, host):
    (tmp_path / "optkit_test_random_models.py").write_text(textwrap.dedent("""
        import random
        from torch import nn

        def build():
            model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
            model.picked = random.random()  # random too is seeded
            return model
    """))

    def baseline(seed: int, run: str) -> tuple[dict, dict]:
        path = tmp_path / f"{run}.yaml"
        path.write_text(textwrap.dedent(f"""
            model: {{source: "python:optkit_test_random_models:build", input_shape: [1, 3, 8, 8]}}
            seed: {seed}
            measure: {{warmup: 0, iters: 1}}
            output: {tmp_path / run}
        """))
        torch.manual_seed(12345 + len(run))  # whatever the global state was before, the run seeds it
        state = torch.random.get_rng_state()
        report, run_dir = run_pipeline(load_pipeline(path, host.get_pass), host)
        assert report.status == "ok"
        assert torch.equal(torch.random.get_rng_state(), state)  # and puts it back
        model = torch.load(run_dir / "model.pt", weights_only=False)
        return report.pipeline, {"weights": model.state_dict(), "picked": model.picked}

    pipeline, first = baseline(0, "a")
    _, again = baseline(0, "bb")
    _, other = baseline(1, "ccc")
    assert pipeline.seed == 0
    assert first["picked"] == again["picked"] != other["picked"]
    for key, value in first["weights"].items():
        torch.testing.assert_close(again["weights"][key], value, rtol=0, atol=0)
    assert not torch.equal(other["weights"]["0.weight"], first["weights"]["0.weight"])
