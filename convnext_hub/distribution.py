"""ConvNeXt on several devices and hosts with Keras' own distribution API (`keras.distribution`).

`keras.distribution` runs on the JAX backend (see docs/fine-tuning.md, "Several devices and hosts",
for TensorFlow and torch):

- data parallel: `keras.distribution.set_distribution(keras.distribution.DataParallel())` before the
  model is built; every device holds all the weights and a slice of each batch.
- model parallel: `keras.distribution.ModelParallel(layout_map=get_layout_map(mesh))`, for models whose
  weights and optimizer state do not fit on one device (`convnextv2_huge`): the large Dense kernels are
  split over the mesh's "model" axis.
- several processes or hosts: `keras.distribution.initialize(...)` in each process first.

`check_batches` is the one-line error `fine_tune` and `fine_tune_folder` give when a batch would not split
evenly over the devices (JAX refuses such a batch in the middle of `fit`); `use_data_parallel` is what
`python -m convnext_hub.finetune --data-parallel` sets.
"""

import keras

__all__ = ["batch_shards", "check_batches", "get_layout_map", "use_data_parallel"]


def get_layout_map(device_mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch"):
    """A `keras.distribution.LayoutMap` that shards a ConvNeXt's large Dense kernels over `device_mesh`.

    Follows keras-hub's `get_layout_map(device_mesh, model_parallel_dim_name, data_parallel_dim_name)`
    convention: each kernel is split over the model axis along one dimension and over the data axis along
    the other, so a weight (and its two AdamW moments) takes 1 / (number of devices) of the memory on each
    device. The block MLP holds about 96 % of the parameters of every ConvNeXt (`convnextv2_huge`: 633M of
    660M), so these kernels are the ones worth splitting:

        stages_{i}_blocks_{j}_mlp_fc1/kernel   (dim, 4 dim)      -> (data, model)
        stages_{i}_blocks_{j}_mlp_fc2/kernel   (4 dim, dim)      -> (model, data)
        head_pre_logits_fc/kernel              (width, hidden)   -> (data, model)
        head_fc/kernel                         (width, classes)  -> (model, None)

    fc1's output and fc2's input share the model split, as in Megatron-style tensor parallelism, so the
    4x-wide activation between them stays split. The classifier's class dimension is never split (a class
    count need not divide by the mesh). Every other variable (stem, downsampling convs, depthwise convs,
    norms, biases, layer scale, GRN) is replicated. Variable paths may carry a prefix (a model nested in
    another).

    The axis sizes must divide the widths they split: the architectures' widths (40 ... 2816, and four
    times those) are multiples of 8, so any mesh whose two axes are each 1, 2, 4 or 8 devices fits every
    architecture.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh` with both axis names.
        model_parallel_dim_name: the mesh axis the kernels are split over.
        data_parallel_dim_name: the mesh axis the batch is split over (`ModelParallel`'s
            `batch_dim_name`); the kernels' other dimension is split over it too.

    Returns:
        The `LayoutMap`, for `keras.distribution.ModelParallel(layout_map=..., batch_dim_name=...)`.

    Example:
        ```python
        import keras
        from convnext_hub.distribution import get_layout_map

        mesh = keras.distribution.DeviceMesh(
            shape=(1, keras.distribution.get_device_count()), axis_names=("batch", "model"),
            devices=keras.distribution.list_devices(),
        )
        keras.distribution.set_distribution(
            keras.distribution.ModelParallel(layout_map=get_layout_map(mesh), batch_dim_name="batch")
        )
        ```
    """
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise ValueError(f"Expected a `keras.distribution.DeviceMesh`. Received: device_mesh={device_mesh!r}")
    for name in (model_parallel_dim_name, data_parallel_dim_name):
        if name not in device_mesh.axis_names:
            raise ValueError(
                f"{name!r} is not an axis of the device mesh. Received: axis_names={tuple(device_mesh.axis_names)}"
            )
    model, data = model_parallel_dim_name, data_parallel_dim_name
    prefix = r"(?:.*/)?"
    layout_map = keras.distribution.LayoutMap(device_mesh)
    layout_map[prefix + r"stages_\d+_blocks_\d+_mlp_fc1/kernel"] = (data, model)
    layout_map[prefix + r"stages_\d+_blocks_\d+_mlp_fc2/kernel"] = (model, data)
    layout_map[prefix + r"head_pre_logits_fc/kernel"] = (data, model)
    layout_map[prefix + r"head_fc/kernel"] = (model, None)
    return layout_map


def use_data_parallel(error=ValueError):
    """Sets `keras.distribution.DataParallel()` over every device (`--data-parallel`); JAX only.

    Raises `error` (one line) on another backend, where Keras' `fit` does not follow a `keras.distribution`.
    """
    backend = keras.backend.backend()
    if backend != "jax":
        raise error(f"data parallel training needs the JAX backend (KERAS_BACKEND=jax); this process runs {backend}")
    keras.distribution.set_distribution(keras.distribution.DataParallel())


def batch_shards(distribution=None):
    """Into how many slices each batch this process feeds to `fit` is cut: 1 without a distribution.

    The distribution's batch axis spans `device_mesh.shape[batch axis]` devices over all processes; with
    several processes each feeds its own share of the global batch (arrays) and Keras cuts that share over
    its own devices on the batch axis.
    """
    distribution = distribution or keras.distribution.distribution()
    if distribution is None or distribution.device_mesh is None:
        return 1
    mesh = distribution.device_mesh
    shards = int(mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)])
    return max(shards // distribution.num_processes, 1)


def check_batches(batch_size, *sample_counts, error=ValueError):
    """Raises `error` (one line) unless every batch of `batch_size` over `sample_counts` samples splits evenly.

    Under a `keras.distribution` distribution JAX cuts each batch into `batch_shards()` equal slices and
    refuses, in the middle of `fit`, a batch that does not divide, the last partial batch of an epoch
    included. Does nothing without a distribution.
    """
    shards = batch_shards()
    if shards == 1:
        return
    problems = [] if batch_size % shards == 0 else [f"batch_size={batch_size}"]
    for count in sample_counts:
        last = count % batch_size
        if last and last % shards:
            problems.append(f"the last batch of {last} ({count} samples in batches of {batch_size})")
    if problems:
        raise error(
            f"{type(keras.distribution.distribution()).__name__} splits each batch over {shards} devices: "
            f"{' and '.join(problems)} must be a multiple of {shards} (change the batch size or the number of samples)"
        )
