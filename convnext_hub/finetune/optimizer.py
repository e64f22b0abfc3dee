"""AdamW with a learning-rate multiplier per variable (layer-wise decay) and a weight EMA kept across `fit` calls.

Adam normalises the gradient, so scaling a gradient does not scale the update: a
layer's learning rate itself has to change, as timm's parameter groups do with
`lr_scale`. Keras optimizers have one learning rate, so `LayerDecayAdamW` scales it
in `update_step`, per variable, by `layer_scales[variable.path]`. Keras swaps its
own `AdamW` class for a fused implementation on the torch backend that never calls
`update_step`; a subclass is left on the generic per-variable path on every backend.

Decoupled weight decay is applied here too, scaled by the same multiplier, because
timm scales the whole group's learning rate and torch's AdamW decays as
`p *= 1 - lr * weight_decay`. The base class's own decay is off (`weight_decay=None`),
so it is not applied twice. No decay on rank-1 variables nor on variables named in
`NO_WEIGHT_DECAY`, as timm's `param_groups_layer_decay` leaves 1-D parameters out.

EMA: Keras' optimizer EMA (`ema_momentum`) keeps the average in the optimizer's
variables, so a checkpoint of the optimizer holds it. Keras puts the average into the
model at the end of every `fit` (`finalize_variable_values`); `fine_tune_folder` calls
`fit` once per epoch, and training would continue from the average. Here that call does
nothing, and `assign_average_to(variables)` puts the average in when the caller decides.
"""

import re

import keras

__all__ = ["NO_WEIGHT_DECAY", "LayerDecayAdamW", "decays"]

# Variable names (`variable.name`, not its path) that get no weight decay: biases,
# norm scales / offsets, LayerScale and GRN (`gamma`, `beta`). Every rank-1 variable
# is excluded as well (timm's `param_groups_weight_decay` rule).
NO_WEIGHT_DECAY = ("bias", "gamma", "beta")

# A TensorFlow variable's name -> its Keras path: drop the ":0" and a mirrored copy's "/replica_N".
_REPLICA = re.compile(r"(/replica_\d+)?:\d+$")


def decays(variable):
    """Whether weight decay applies to `variable`: not rank <= 1, not named in `NO_WEIGHT_DECAY`."""
    return len(variable.shape) > 1 and variable.name not in NO_WEIGHT_DECAY


@keras.saving.register_keras_serializable(package="convnext_hub")
class LayerDecayAdamW(keras.optimizers.Adam):
    """AdamW whose learning rate and weight decay are scaled per variable.

    Args:
        learning_rate: a float or a schedule: the rate of a variable with multiplier 1.
        weight_decay: decoupled weight decay (torch's form, `p *= 1 - lr * m * weight_decay`).
        layer_scales: `{variable.path: multiplier}` (`layer_decay.layer_scales`); a variable
            not listed gets 1.0. JSON-serialisable, so `get_config` round-trips it.
        ema_momentum: None for no EMA, or the momentum of Keras' optimizer EMA
            (`average = m * average + (1 - m) * weight` after each step, the first step
            copying the weights).
        **kwargs: the other arguments of `keras.optimizers.Adam`.
    """

    def __init__(self, learning_rate=0.001, weight_decay=0.05, layer_scales=None, ema_momentum=None, **kwargs):
        kwargs.pop("use_ema", None)  # from get_config: implied by ema_momentum
        kwargs.pop("weight_decay", None)
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=None,
            use_ema=ema_momentum is not None,
            ema_momentum=0.99 if ema_momentum is None else ema_momentum,
            **kwargs,
        )
        self.decoupled_weight_decay = float(weight_decay or 0.0)
        self.layer_scales = {str(k): float(v) for k, v in (layer_scales or {}).items()}

    def build(self, variables):
        """Adam's slots, and each variable's (multiplier, decays) by path, read from the Keras variables.

        `update_step` may get the backend's own variable (TensorFlow's, named `path:0`, or
        `path/replica_1:0` for a copy under `tf.distribute.MirroredStrategy`), which has
        neither a `path` nor the Keras `name`; the rules are fixed here instead.
        """
        if self.built:
            return
        super().build(variables)
        self.variable_rules = {v.path: (self.layer_scales.get(v.path, 1.0), decays(v)) for v in variables}

    def update_step(self, gradient, variable, learning_rate):
        """Decay, then Adam's step, both with the learning rate times the variable's multiplier."""
        path = variable.path if hasattr(variable, "path") else _REPLICA.sub("", variable.name)
        scale, decay = self.variable_rules[path]
        learning_rate = keras.ops.cast(learning_rate, variable.dtype)
        if scale != 1.0:
            learning_rate = learning_rate * scale
        if self.decoupled_weight_decay and decay:
            self.assign_sub(variable, variable * (learning_rate * self.decoupled_weight_decay))
        super().update_step(gradient, variable, learning_rate)

    def finalize_variable_values(self, var_list):
        """Leaves the weights alone at the end of `fit` (see the module docstring)."""

    def assign_average_to(self, var_list):
        """Puts the EMA of the weights into `var_list` (the model's trainable variables, as built)."""
        if self.use_ema:
            super().finalize_variable_values(var_list)

    def get_config(self):
        config = super().get_config()
        config.update(
            weight_decay=self.decoupled_weight_decay,
            layer_scales=dict(self.layer_scales),
            ema_momentum=self.ema_momentum if self.use_ema else None,
        )
        return config
