"""The ``tta`` pass: test-time augmentation that knows what it merges.

Modules: :mod:`~optkit_plugins.tta.plugin` (the pass), :mod:`~optkit_plugins.tta.wrapper` (the
module that runs the branches), :mod:`~optkit_plugins.tta.kinds` (what each output is: logits,
dense maps, YOLO detections), :mod:`~optkit_plugins.tta.detections` (boxes mapped back and merged).
"""

from optkit_plugins.tta.plugin import TTA, optkit_register_passes
from optkit_plugins.tta.wrapper import TestTimeAugmentation

__all__ = ["TTA", "TestTimeAugmentation", "optkit_register_passes"]
