"""The ``finetune`` pass: train on ``data.train`` by distillation from the model before, and/or
recalibrate BatchNorm.

Modules: :mod:`~optkit_plugins.finetune.plugin` (the pass), :mod:`~optkit_plugins.finetune.training`
(the loop), :mod:`~optkit_plugins.finetune.loss` (distillation and cross-entropy) and
:mod:`~optkit_plugins.finetune.batchnorm` (frozen layers, recalibration).
"""

from optkit_plugins.finetune.plugin import FineTune, optkit_register_passes

__all__ = ["FineTune", "optkit_register_passes"]
