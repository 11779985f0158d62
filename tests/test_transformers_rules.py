"""The transformers module rules, proven on transformers' own modules: channel pruning removes whole
attention heads of BERT (q, k and v in ``BertSelfAttention``, the output projection in its sibling
``BertSelfOutput``) and of ViT (``o_proj`` inside ``ViTAttention``), keeps the head counts right,
and the pruned model computes what the unpruned one computes with those heads masked (zeroed)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from optkit.models.rules import ModuleRules
from optkit.testing import run_pass
from optkit_plugins.hf_source import FirstOutput
from optkit_plugins.module_rules import TRANSFORMERS_RULES
from optkit_plugins.prune_l1 import prune_channels

transformers = pytest.importorskip("transformers")

RULES = ModuleRules({rule.class_path: rule for rule in TRANSFORMERS_RULES})
#: BERT from a tiny config: hidden 64, 4 heads of 16, 2 layers, vocabulary 100.
BERT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100, "num_labels": 3}
HEAD = 16
#: Every layer but the heads' q, k and v keeps its output width, so that only heads are removed
#: (LayerNorm over a narrower stream computes other statistics, which no zeroing reproduces).
HEADS_ONLY = {
    pattern: "kept for the masking check"
    for pattern in (
        "*.output.dense",
        "*.intermediate.dense",
        "*.pooler.dense",
        "*classifier",
        "*classifier.dense",
        "*.fc1",
        "*.fc2",
        "*.projection",
    )
}
#: Masking compares layers of different widths (sums in another order): float32 rounding only.
EXACT = {"rtol": 1e-5, "atol": 1e-6}


def tiny_bert(seed: int = 0, family: str = "Bert") -> nn.Module:
    """A tiny ``{family}ForSequenceClassification`` (BERT or one of the models that copy its attention)."""
    torch.manual_seed(seed)
    config = getattr(transformers, f"{family}Config")(**BERT, attn_implementation="eager")
    return FirstOutput(getattr(transformers, f"{family}ForSequenceClassification")(config)).eval()


def tokens() -> tuple[torch.Tensor, torch.Tensor]:
    """Two sequences of 12 token ids; the second one's last 4 positions are padding (mask 0)."""
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 12, dtype=torch.int64)
    mask[1, 8:] = 0
    return ids, mask


def kept_heads(before: nn.Linear, after: nn.Linear, head: int) -> list[int]:
    """Which heads of ``before`` (rows of ``head``) are the rows of ``after``, in order."""
    blocks = before.weight.detach().split(head)
    return [next(h for h, block in enumerate(blocks) if torch.equal(block, kept)) for kept in after.weight.detach().split(head)]


@torch.no_grad()
def heads_masked(model: nn.Module, attentions: list[tuple[list[nn.Linear], nn.Linear]], removed: list[list[int]], head: int) -> nn.Module:
    """A copy of ``model`` whose ``removed`` heads are zeroed: their q, k and v rows and their projection columns.

    Args:
        model: the model.
        attentions: per attention layer, its q, k and v Linears and its output projection (of ``model``).
        removed: per attention layer, the heads to zero.
        head: the width of one head.
    """
    names = {id(m): name for name, m in model.named_modules()}
    masked = copy.deepcopy(model)
    for (qkv, proj), heads in zip(attentions, removed, strict=True):
        for h in heads:
            rows = slice(h * head, (h + 1) * head)
            for linear in qkv:
                twin = masked.get_submodule(names[id(linear)])
                twin.weight[rows] = 0
                twin.bias[rows] = 0
            masked.get_submodule(names[id(proj)]).weight[:, rows] = 0
    return masked


def l1_head_scores(qkv: list[nn.Linear], head: int) -> list[float]:
    """prune_l1's importance of each head: the L1 norm of each q, k and v row over its layer's mean, summed per head."""
    scores = 0
    for linear in qkv:
        norms = linear.weight.detach().abs().sum(1)
        scores = scores + (norms / norms.mean()).view(-1, head).sum(1)
    return scores.tolist()


@pytest.mark.parametrize(
    ("family", "rule"),
    [
        ("Bert", "transformers.models.bert.modeling_bert.BertSelfAttention"),
        ("Roberta", "transformers.models.roberta.modeling_roberta.RobertaSelfAttention"),
        ("XLMRoberta", "transformers.models.xlm_roberta.modeling_xlm_roberta.XLMRobertaSelfAttention"),
        ("Camembert", "transformers.models.camembert.modeling_camembert.CamembertSelfAttention"),
        ("Electra", "transformers.models.electra.modeling_electra.ElectraSelfAttention"),
    ],
)
def test_bert_loses_whole_heads_and_computes_what_the_model_with_those_heads_masked_computes(family, rule):
    model = tiny_bert(family=family)
    ids, mask = tokens()
    result = prune_channels(model, (ids, mask), 0.5, rules=RULES, keep_outputs=HEADS_ONLY)
    pruned = result.model

    assert set(result.rules_used.values()) == {rule}
    removed, attentions = [], []
    for layer, before in zip(pruned.model.base_model.encoder.layer, model.model.base_model.encoder.layer, strict=True):
        attention = layer.attention.self
        assert (attention.num_attention_heads, attention.attention_head_size, attention.all_head_size) == (2, HEAD, 2 * HEAD)
        assert [attention.query.out_features, attention.key.out_features, attention.value.out_features] == [2 * HEAD] * 3
        assert layer.attention.output.dense.in_features == 2 * HEAD and layer.intermediate.dense.out_features == 128
        qkv = [before.attention.self.query, before.attention.self.key, before.attention.self.value]
        kept = kept_heads(before.attention.self.query, attention.query, HEAD)
        scores = l1_head_scores(qkv, HEAD)
        assert sorted(kept) == sorted(sorted(range(4), key=lambda h: -scores[h])[:2])  # the heads of highest L1 stay
        removed.append(sorted(set(range(4)) - set(kept)))
        attentions.append((qkv, before.attention.output.dense))
    assert pruned.model.config.num_attention_heads == 4  # the shared config is not the layers' head count

    masked = heads_masked(model, attentions, removed, HEAD)
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids, mask), masked(ids, mask), **EXACT)
        assert (pruned(ids, mask) - model(ids, mask)).abs().max() > 1e-4  # the heads removed did carry something
    trained = copy.deepcopy(pruned).train()
    trained(ids, mask).sum().backward()


@pytest.mark.parametrize(
    ("family", "head", "rule"),
    [
        ("ViT", "ForImageClassification", "transformers.models.vit.modeling_vit.ViTAttention"),
        ("DeiT", "ForImageClassification", "transformers.models.deit.modeling_deit.DeiTAttention"),
        ("Dinov2", "Model", "transformers.models.dinov2.modeling_dinov2.Dinov2Attention"),
    ],
)
def test_vit_loses_whole_heads_with_its_projection_inside_and_computes_the_masked_model(family, head, rule):
    torch.manual_seed(0)
    config = getattr(transformers, f"{family}Config")(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, image_size=32, patch_size=8, num_labels=5
    )
    model = FirstOutput(getattr(transformers, f"{family}{head}")(config)).eval()
    x = torch.randn(2, 3, 32, 32)
    result = prune_channels(model, x, 0.5, rules=RULES, keep_outputs=HEADS_ONLY)
    pruned = result.model

    assert set(result.rules_used.values()) == {rule}
    removed, attentions = [], []
    blocks = [m for m in pruned.model.modules() if type(m).__name__.endswith("Layer")]
    originals = [m for m in model.model.modules() if type(m).__name__.endswith("Layer")]
    assert len(blocks) == 2
    for layer, before in zip(blocks, originals, strict=True):
        attention, original = layer.attention, before.attention
        assert (attention.num_attention_heads, attention.head_dim) == (2, 12)
        assert (attention.q_proj.out_features, attention.o_proj.in_features, attention.o_proj.out_features) == (24, 24, 48)
        kept = kept_heads(original.q_proj, attention.q_proj, 12)
        removed.append(sorted(set(range(4)) - set(kept)))
        attentions.append(([original.q_proj, original.k_proj, original.v_proj], original.o_proj))
    masked = heads_masked(model, attentions, removed, 12)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), **EXACT)


@pytest.fixture
def bert_folder(tmp_path):
    """A saved tiny BERT whose heads 2 and 3 write nothing (zero output-projection columns) and
    whose heads 0 and 1 have q, k and v rows 0.8 times as large as those of heads 2 and 3."""
    model = tiny_bert().model
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            for linear in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                linear.weight[: 2 * HEAD] *= 0.8
            layer.attention.output.dense.weight[:, 2 * HEAD :] = 0
    model.save_pretrained(tmp_path / "bert")
    return tmp_path / "bert", model


POSITIONAL = [
    {"name": "input_ids", "shape": [1, 12], "dtype": "int64", "range": [0, 100]},
    {"name": "attention_mask", "shape": [1, 12], "dtype": "int64", "range": [1, 2]},
]
QUICK = {"warmup": 0, "iters": 1, "latency": False}


@pytest.mark.parametrize(
    ("stage", "heads_kept", "exporter"),
    [
        # L1 of the produced rows only: heads 0 and 1 (smaller rows) go, though heads 2 and 3 are silent
        ({"prune_l1": {"mode": "channels", "amount": 0.5, "include": ["*.attention.self.*"]}}, [2, 3], "torchscript"),
        # every tensor of the group: the silent heads' zero projection columns make them the least important
        ({"prune_channels": {"amount": 0.5, "importance": "l1", "include": ["*.attention.self.*"]}}, [0, 1], "dynamo"),
    ],
)
def test_bert_heads_are_scored_by_the_criterion_and_the_pruned_model_exports(tmp_path, bert_folder, stage, heads_kept, exporter):
    folder, original = bert_folder
    run = run_pass(
        "export_onnx",
        {"exporter": exporter},
        tmp_path=tmp_path / "run",
        source=f"hf:{folder}",
        inputs=POSITIONAL,
        before=[stage],
        measure=QUICK,
    )
    pruned_stage = run.report["stages"][1]
    assert pruned_stage["status"] == "ok"
    assert pruned_stage["details"]["channels"]["model.bert.encoder.layer.0.attention.self.query"] == [64, 32]
    assert pruned_stage["metrics"]["macs"] < run.baseline["metrics"]["macs"]
    assert run.stage["details"]["exporter"] == exporter  # torch.export: positional inputs through FirstOutput's *args
    for parity in run.stage["details"]["parity"]["inputs"].values():  # batch 1, 2 and 8: onnxruntime runs it as torch does
        assert parity["comparable"] and parity["max_abs"] <= 1e-5 * max(1.0, parity["reference_max_abs"])

    pruned = run.load_model().model
    for layer, before in zip(pruned.bert.encoder.layer, original.bert.encoder.layer, strict=True):
        attention = layer.attention.self
        assert (attention.num_attention_heads, attention.all_head_size, layer.attention.output.dense.in_features) == (2, 32, 32)
        assert kept_heads(before.attention.self.query, attention.query, HEAD) == heads_kept
    if heads_kept == [0, 1]:  # only silent heads went: the outputs are the model's own
        ids, mask = tokens()
        with torch.no_grad():
            torch.testing.assert_close(pruned(ids, mask).logits, original.eval()(ids, mask).logits, **EXACT)
