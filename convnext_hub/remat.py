"""Gradient checkpointing: each block rematerialised in training (`ConvNeXt(remat=True)`).

A block's activations (the 4x-wide MLP ones above all) are not kept for the
backward pass: only the block's input is, and the block runs again when its
gradient is needed, as timm's `set_grad_checkpointing` does. `keras.remat` is
each backend's mechanism (`jax.checkpoint`, `tf.recompute_grad`,
`torch.utils.checkpoint`). Keras' `RematScope` works per layer, which keeps
every layer's output anyway; a block is a run of layers in the functional
graph, so the model runs the graph in pieces cut at the block boundaries
(`model.graph_points`): the stem, each downsample, each block (rematerialised)
and the head, each a functional sub-model over the model's own layers.

Stochastic depth and dropout draw new random numbers when a block runs again,
so in training with `drop_path_rate > 0` the recomputed block can differ from
the first run; set the rates to 0 where gradients must be exact.
"""

import weakref

import keras

_PIECES = weakref.WeakKeyDictionary()


class _Pieces:
    """The sub-models a rematerialised forward runs, in order."""

    def __init__(self, model):
        points = model.graph_points
        num_stages = (max(model.out_indices) + 1) if model.features_only else len(points.stages)
        first_block_input = points.blocks[0][0][0]
        self.stem = keras.Model(model.inputs[0], first_block_input)
        self.stages = []
        previous = first_block_input
        for blocks in points.blocks[:num_stages]:
            entry = keras.Model(previous, blocks[0][0]) if blocks[0][0] is not previous else None
            self.stages.append((entry, [keras.Model(start, end) for start, end in blocks]))
            previous = blocks[-1][1]
        outputs = model.outputs if len(model.outputs) > 1 else model.outputs[0]
        self.head = keras.Model(points.stages[:num_stages], outputs)


def rematerialized_call(model, inputs, training):
    """`model(inputs, training=training)` with each block rematerialised."""
    pieces = _PIECES.get(model)
    if pieces is None:
        pieces = _PIECES[model] = _Pieces(model)
    x = pieces.stem(inputs, training=training)
    stage_maps = []
    for entry, blocks in pieces.stages:
        if entry is not None:
            x = entry(x, training=training)
        for block in blocks:
            x = keras.remat(_bound(block, training))(x)
        stage_maps.append(x)
    return pieces.head(stage_maps, training=training)


def _bound(block, training):
    def run(x):
        return block(x, training=training)

    return run
