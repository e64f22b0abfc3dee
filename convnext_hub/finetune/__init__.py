"""Fine-tuning ConvNeXt classifiers: the recipe on arrays or datasets, and from a folder of images.

- `fine_tune(model, train_data, ...)`: head-only warm-up, then the whole network with
  AdamW and a warmup-cosine learning rate (`recipe`).
- `fine_tune_folder(source, data=..., out=...)` and `python -m convnext_hub.finetune`:
  a class-per-folder image tree streamed from disk (`data`), checkpoints every epoch,
  `resume=True`, and a saved folder that `load_pretrained` loads (`folder`), with timm's
  recipe on request: layer-wise learning-rate decay (`layer_decay`, `LayerDecayAdamW`),
  an EMA of the weights, RandAugment, random erasing, mixup and CutMix (`augment`).
"""

from .augment import Augment
from .data import DataError
from .folder import RunError, fine_tune_folder
from .layer_decay import layer_scales
from .optimizer import LayerDecayAdamW
from .recipe import (
    NO_WEIGHT_DECAY,
    SparseCategoricalCrossentropyWithSmoothing,
    _steps_per_epoch,
    fine_tune,
    head_layers,
    make_optimizer,
    warmup_cosine,
)

__all__ = [
    "NO_WEIGHT_DECAY",
    "Augment",
    "DataError",
    "LayerDecayAdamW",
    "RunError",
    "SparseCategoricalCrossentropyWithSmoothing",
    "_steps_per_epoch",
    "fine_tune",
    "fine_tune_folder",
    "head_layers",
    "layer_scales",
    "make_optimizer",
    "warmup_cosine",
]
