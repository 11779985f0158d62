"""Rules for Hugging Face transformers modules, named by class path (transformers is not imported).

- BERT's ``BertSelfAttention``: ``query``, ``key`` and ``value`` (three Linears, rows
  ``(num_attention_heads, attention_head_size)``), attention per head, and the heads' outputs side
  by side; the output projection is ``dense`` of the sibling ``BertSelfOutput``, which the operator
  rules follow. Channel pruning removes whole heads (their q, k and v rows and their columns of
  that ``dense``) and updates ``num_attention_heads`` and ``all_head_size``, as transformers' own
  ``prune_heads`` did.
- ViT's ``ViTAttention``: ``q_proj``, ``k_proj`` and ``v_proj``, attention per head, then
  ``o_proj`` inside the module; whole heads go and ``num_attention_heads`` is updated.

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


TRANSFORMERS_RULES: tuple[ModuleRule, ...] = (
    ModuleRule(
        "transformers.models.bert.modeling_bert.BertSelfAttention",
        computes="query, key, value = Linear(x) each viewed as (heads, head_size); softmax(q k^T * scale + mask) v per head; "
        "the heads side by side (BertSelfOutput.dense projects them)",
        check=_linears_problem("query", "key", "value"),
        attention=AttentionHeads(qkv=("query", "key", "value"), proj=None, num_heads="num_attention_heads", head_dim="attention_head_size"),
        fixup=_bert_fixup,
        note="channel pruning removes whole heads; attention_head_size and the softmax scale stay as trained",
    ),
    ModuleRule(
        "transformers.models.vit.modeling_vit.ViTAttention",
        computes="q, k, v = Linear(x) each viewed as (heads, head_dim); softmax(q k^T * scale) v per head; o_proj = Linear",
        check=_linears_problem("q_proj", "k_proj", "v_proj", "o_proj"),
        attention=AttentionHeads(qkv=("q_proj", "k_proj", "v_proj"), proj="o_proj", num_heads="num_attention_heads", head_dim="head_dim"),
        note="channel pruning removes whole heads; head_dim and the softmax scale stay as trained",
    ),
)
