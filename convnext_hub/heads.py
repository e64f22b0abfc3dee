"""Which stored head weights a model takes: the one place that decides head compatibility.

A ConvNeXt's head is described by three constructor arguments (`num_classes`,
`include_top`, `features_only`). Every loading path (timm state dicts, Keras
files, saved folders, cache entries) compares the model's `Head` with the
stored model's through the methods below, so that a head of another size is
left fresh in the same cases whichever path loads it:

* the classifier's weights carry over only into a classifier of the same size;
* the other head layers (`norm_pre`, `head_norm`, pre-logits) carry over into
  any model that has them: every model with a head (`include_top` and not
  `features_only`), and a head-norm-first model without its top keeps `norm_pre`;
* a model whose head flags equal the stored ones is the stored model: its
  weights are exactly the stored weights, by variable path.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Head:
    """The head arguments of a ConvNeXt; the defaults are `ConvNeXt`'s."""

    num_classes: int = 1000
    include_top: bool = True
    features_only: bool = False

    @classmethod
    def of(cls, model):
        """The head of a built model."""
        return cls(**{name: getattr(model, name) for name in cls.fields()})

    @classmethod
    def from_config(cls, config):
        """The head of a model config (a `get_config()` dict, or keyword arguments); defaults where absent."""
        return cls(**{name: config[name] for name in cls.fields() if name in config})

    @staticmethod
    def fields():
        return tuple(field.name for field in dataclasses.fields(Head))

    def as_kwargs(self):
        return dataclasses.asdict(self)

    @property
    def has_top(self):
        """True when the model has head layers (norms, pre-logits, classifier) after the stages."""
        return self.include_top and not self.features_only

    def takes_classifier(self, stored_num_classes):
        """True when the stored classifier (of `stored_num_classes` outputs) loads into this head."""
        return self.has_top and self.num_classes == stored_num_classes

    def takes_all_of(self, stored):
        """True when every weighted head layer of this model is in `stored` (a `Head`) with its shape."""
        return stored.has_top and (not self.has_top or self.takes_classifier(stored.num_classes))
