"""Rules for Hugging Face transformers modules, named by class path (transformers is not imported).

- BERT's ``BertSelfAttention`` and its copies in RoBERTa, XLM-RoBERTa, CamemBERT and ELECTRA:
  ``query``, ``key`` and ``value`` (three Linears, rows ``(num_attention_heads,
  attention_head_size)``), attention per head, and the heads' outputs side by side; the output
  projection is ``dense`` of the sibling ``SelfOutput``, which the operator rules follow. Channel
  pruning removes whole heads (their q, k and v rows and their columns of that ``dense``) and
  updates ``num_attention_heads`` and ``all_head_size``, as transformers' own ``prune_heads`` did.
- ViT's ``ViTAttention`` and its copies in DeiT and DINOv2: ``q_proj``, ``k_proj`` and ``v_proj``,
  attention per head, then ``o_proj`` inside the module; whole heads go and ``num_attention_heads``
  is updated.

Both keep ``attention_head_size``/``head_dim`` and the softmax scale as trained; their ``forward``
reshapes into heads with ``-1``, so the pruned modules run as they are (eager, SDPA and exported).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from optkit import AttentionHeads, ModuleRule

__all__ = ["TRANSFORMERS_RULES"]


def _linears_problem(*names: str) -> Any:
    """``check``: the module's projections ``names`` must be ``nn.Linear``."""

    def problem(module: nn.Module) -> str | None:
        if not all(isinstance(getattr(module, name, None), nn.Linear) for name in names):
            return f"{', '.join(names)} are not all nn.Linear"
        return None

    return problem


def _bert_fixup(module: nn.Module) -> None:
    attention: Any = module  # BertSelfAttention: the head count and width are ints
    attention.all_head_size = attention.num_attention_heads * attention.attention_head_size


def _bert_self_attention(class_path: str) -> ModuleRule:
    return ModuleRule(
        class_path,
        computes="query, key, value = Linear(x) each viewed as (heads, head_size); softmax(q k^T * scale + mask) v per head; "
        "the heads side by side (the sibling SelfOutput.dense projects them)",
        check=_linears_problem("query", "key", "value"),
        attention=AttentionHeads(qkv=("query", "key", "value"), proj=None, num_heads="num_attention_heads", head_dim="attention_head_size"),
        fixup=_bert_fixup,
        note="channel pruning removes whole heads; attention_head_size and the softmax scale stay as trained",
    )


def _vit_attention(class_path: str) -> ModuleRule:
    return ModuleRule(
        class_path,
        computes="q, k, v = Linear(x) each viewed as (heads, head_dim); softmax(q k^T * scale) v per head; o_proj = Linear",
        check=_linears_problem("q_proj", "k_proj", "v_proj", "o_proj"),
        attention=AttentionHeads(qkv=("q_proj", "k_proj", "v_proj"), proj="o_proj", num_heads="num_attention_heads", head_dim="head_dim"),
        note="channel pruning removes whole heads; head_dim and the softmax scale stay as trained",
    )


#: transformers' copies of ``BertSelfAttention`` (the same code under each model's name).
BERT_LIKE = (
    "bert.modeling_bert.Bert",
    "roberta.modeling_roberta.Roberta",
    "xlm_roberta.modeling_xlm_roberta.XLMRoberta",
    "camembert.modeling_camembert.Camembert",
    "electra.modeling_electra.Electra",
)
#: transformers' copies of ``ViTAttention``.
VIT_LIKE = ("vit.modeling_vit.ViT", "deit.modeling_deit.DeiT", "dinov2.modeling_dinov2.Dinov2")

TRANSFORMERS_RULES: tuple[ModuleRule, ...] = (
    *(_bert_self_attention(f"transformers.models.{path}SelfAttention") for path in BERT_LIKE),
    *(_vit_attention(f"transformers.models.{path}Attention") for path in VIT_LIKE),
)
