"""`Weights`: pretrained weights from any source, ready to load into a model."""

import os
from dataclasses import dataclass, field

from convnext_hub.convert.conversion import export_timm_state_dict, load_timm_state_dict

from .. import variants
from ..convert import load_checkpoint, to_timm_keys
from ..families import create_from_structure
from ..heads import Head
from ..model import zeros_initialized
from ..weights_io import load_weights_file


@dataclass
class Weights:
    """Pretrained weights ready to load into a model of `architecture` (or of geometry `structure`)."""

    architecture: str | None  # a timm architecture, or None for a custom geometry
    num_classes: int  # classes of the stored classifier; 0 when it has none
    pretrained_cfg: dict
    source: str  # for messages
    state_dict: dict | None = None  # timm keys, float32 arrays or lazily read tensors
    keras_file: str | None = None  # `.weights.h5` / `.keras` of a model with `stored_head`
    stored_head: Head | None = None  # the head of the stored model
    structure: dict = field(default=None)  # `variants.STRUCTURAL_KEYS`; the architecture's when not given

    def __post_init__(self):
        if self.structure is None:
            self.structure = variants.architecture(self.architecture)

    def build(self, **model_kwargs):
        """A model of this geometry (zero kernels: every weight is loaded next, or re-initialised)."""
        clash = sorted(set(self.structure) & set(model_kwargs))
        if clash:
            raise ValueError(f"Structural arguments are fixed by the checkpoint {self.source}. Received: {clash}")
        with zeros_initialized():
            return create_from_structure(self.structure, architecture=self.architecture, **model_kwargs)

    def load_into(self, model):
        """Set every weight of `model` (built for `architecture`); a different head is left fresh."""
        if self.keras_file is not None and Head.of(model) == self.stored_head:
            load_weights_file(model, self.keras_file)
        else:
            load_timm_state_dict(model, self.as_timm_state_dict(), source=self.source)
        return model

    def as_timm_state_dict(self):
        if self.state_dict is None:  # a Keras file: load it as stored, then export
            stored = self.build(**self.stored_head.as_kwargs())
            load_weights_file(stored, self.keras_file)
            self.state_dict = export_timm_state_dict(stored)
        return self.state_dict


def read_timm_state_dict(path):
    """A checkpoint file or folder as a timm-keyed `{key: array}` (safetensors read lazily).

    Values are not read here: `converters.plan_weights` refuses NaN / Inf as it
    reads each tensor (a pass over the file now would read gigabytes twice).
    """
    return to_timm_keys(load_checkpoint(path, lazy=True), source=os.fspath(path))
