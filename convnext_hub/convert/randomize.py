"""Random but well-scaled values for every parameter of a torch ConvNeXt.

timm initialises layer scale to 1e-6 and GRN to zero, which hides almost any
mapping bug; equivalence checks (`--verify`, `--random-init`, the tests)
randomize every parameter first.
"""

import math


def randomize_(module, seed=0):
    """Randomize every parameter of a timm or transformers ConvNeXt in place.

    Weights ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.2), biases ~ N(0, 0.2),
    layer-scale gamma ~ 0.5 + N(0, 0.3), GRN weight / bias ~ N(0, 0.5).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            leaf = name.rsplit(".", 1)[-1]
            if ".grn." in name or name.startswith("grn."):
                value = 0.5 * noise
            elif leaf in ("gamma", "layer_scale_parameter"):
                value = 0.5 + 0.3 * noise
            elif leaf == "bias":
                value = 0.2 * noise
            elif param.ndim == 1:  # norm scale
                value = 1.0 + 0.2 * noise
            else:
                value = noise / math.sqrt(math.prod(param.shape[1:]))
            param.copy_(value)
    return module
