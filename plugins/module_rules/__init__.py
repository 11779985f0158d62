"""Module rules for the libraries optkit users bring: timm, Ultralytics and Hugging Face
transformers (see :mod:`optkit.models.rules`). Registered through the ``optkit`` entry-point group
as any plugin's rules are; no library is imported here (Ultralytics is AGPL-3.0): classes are
named by path.

Modules: :mod:`~optkit_plugins.module_rules.timm_rules`,
:mod:`~optkit_plugins.module_rules.ultralytics_rules`,
:mod:`~optkit_plugins.module_rules.transformers_rules`.
"""

from __future__ import annotations

from optkit import hookimpl
from optkit_plugins.module_rules.timm_rules import TIMM_RULES
from optkit_plugins.module_rules.transformers_rules import TRANSFORMERS_RULES
from optkit_plugins.module_rules.ultralytics_rules import ULTRALYTICS_RULES

__all__ = ["TIMM_RULES", "TRANSFORMERS_RULES", "ULTRALYTICS_RULES", "optkit_register_module_rules"]


@hookimpl
def optkit_register_module_rules(register):
    """Register the timm, Ultralytics and transformers rules."""
    for rule in (*TIMM_RULES, *ULTRALYTICS_RULES, *TRANSFORMERS_RULES):
        register(rule)
