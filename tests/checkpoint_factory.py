"""Random checkpoints in every layout the converters read, for tests.

Models come from timm / transformers with every parameter randomized, so that
a wrong mapping cannot hide behind an init value (ones, zeros, 1e-6).
"""

import json
import os
import pathlib
import re

import numpy as np
import pytest
import torch

from convnext_hub.convert.randomize import randomize_  # noqa: F401  (re-exported for tests)


def random_timm_model(arch, num_classes=1000, seed=0, **kwargs):
    """`timm.create_model(arch)` (no download) with every parameter randomized, in eval mode."""
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    return randomize_(model, seed).eval()


def random_hf_model(kind="v1", depths=(2, 2, 6, 2), hidden_sizes=(40, 80, 160, 320), num_labels=10, seed=0, **config):
    """transformers `ConvNextForImageClassification` ("v1") or `ConvNextV2ForImageClassification` ("v2").

    Random weights, eval mode. `layer_norm_eps` (used by HF only for the final
    pooled norm; blocks hard-code 1e-6) defaults to timm's 1e-6 here, not HF's 1e-12.
    """
    import transformers as T

    config.setdefault("layer_norm_eps", 1e-6)
    cfg_cls, model_cls = {
        "v1": (T.ConvNextConfig, T.ConvNextForImageClassification),
        "v2": (T.ConvNextV2Config, T.ConvNextV2ForImageClassification),
    }[kind]
    cfg = cfg_cls(depths=list(depths), hidden_sizes=list(hidden_sizes), num_labels=num_labels, **config)
    return randomize_(model_cls(cfg), seed).eval()


def state_dict_numpy(model_or_state_dict):
    """`{key: float32 numpy array}` of a torch module or state dict."""
    sd = model_or_state_dict
    if isinstance(sd, torch.nn.Module):
        sd = sd.state_dict()
    return {k: v.detach().float().numpy().copy() for k, v in sd.items()}


def _torch_state_dict(sd):
    return {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))) for k, v in sd.items()}


def timm_to_official(state_dict, pwconv_ndim=2):
    """Invert timm's `checkpoint_filter_fn`: timm keys -> facebookresearch keys.

    fc1 / fc2 come out with `pwconv_ndim` dimensions (2: Linear, as the official
    code stores them; 4: 1x1 conv). GRN parameters come out (1, 1, 1, C).
    Only patch-stem, pool-then-norm architectures have an official layout.
    """
    out = {}
    for key, value in state_dict.items():
        if re.match(r"^(norm_pre|head\.pre_logits|stem\.[2-9])\.", key):
            raise ValueError(f"{key!r} has no official-layout equivalent")
        new = re.sub(r"^stem\.", "downsample_layers.0.", key)
        new = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", new)
        new = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", new)
        new = new.replace(".conv_dw.", ".dwconv.").replace(".mlp.fc1.", ".pwconv1.").replace(".mlp.fc2.", ".pwconv2.")
        if ".mlp.grn." in new:
            new = new.replace(".mlp.grn.weight", ".grn.gamma").replace(".mlp.grn.bias", ".grn.beta")
            value = value.reshape(1, 1, 1, -1)
        new = re.sub(r"^head\.norm\.", "norm.", new)
        new = re.sub(r"^head\.fc\.", "head.", new)
        if ".pwconv" in new and new.endswith(".weight"):
            value = value.reshape(*value.shape[:2], *(1,) * (pwconv_ndim - 2))
        out[new] = value
    return out


def timm_to_clip(state_dict, text_keys=True):
    """timm keys -> open_clip keys: trunk under `visual.trunk.`, classifier as the bias-free `visual.head.proj`."""
    out = {}
    for key, value in state_dict.items():
        if key == "head.fc.weight":
            out["visual.head.proj.weight"] = value
        elif key != "head.fc.bias":
            out["visual.trunk." + key] = value
    if text_keys:
        out["logit_scale"] = np.ones((), np.float32)
        out["transformer.resblocks.0.attn.in_proj_weight"] = np.zeros((12, 4), np.float32)
    return out


def save_safetensors(sd, path, dtype=None):
    """Write `sd` (torch tensors or numpy arrays) as safetensors, optionally cast to torch `dtype`."""
    from safetensors.torch import save_file

    tensors = {k: v.to(dtype) if dtype is not None else v for k, v in _torch_state_dict(sd).items()}
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, os.fspath(path))
    return path


def save_pth(sd, path, wrap=None, prefix="", **save_kwargs):
    """`torch.save` `sd` with keys prefixed by `prefix` and wrapped as `{wrap: sd}` when `wrap` is given."""
    tensors = {prefix + k: v for k, v in _torch_state_dict(sd).items()}
    torch.save({wrap: tensors} if wrap else tensors, os.fspath(path), **save_kwargs)
    return path


def save_sharded(sd, folder, n_shards=3, fmt="safetensors"):
    """Split `sd` over `n_shards` files in `folder` plus the HF-style `*.index.json`; returns the index path.

    Files are named as transformers names them: `model-00001-of-00003.safetensors`
    or `pytorch_model-00001-of-00003.bin`, and `<name>.<ext>.index.json`.
    """
    os.makedirs(folder, exist_ok=True)
    keys = list(sd)
    name, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    weight_map = {}
    for i in range(n_shards):
        shard = f"{name}-{i + 1:05d}-of-{n_shards:05d}.{ext}"
        part = {k: sd[k] for k in keys[i::n_shards]}
        (save_safetensors if fmt == "safetensors" else save_pth)(part, os.path.join(folder, shard))
        weight_map.update(dict.fromkeys(part, shard))
    index = os.path.join(folder, f"{name}.{ext}.index.json")
    with open(index, "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=2)
    return index


class RandomCheckpoints:
    """Random timm checkpoints saved once per (arch, seed, num_classes, format) in `folder`.

    `make(arch, seed=0)` -> `(random timm model, path of its model.safetensors)`;
    `fmt="pth"` saves a `torch.save` file instead.
    """

    def __init__(self, folder):
        self.folder = folder
        self._made = {}

    def __call__(self, arch, seed=0, num_classes=1000, fmt="safetensors"):
        key = (arch, seed, num_classes, fmt)
        if key not in self._made:
            model = random_timm_model(arch, num_classes=num_classes, seed=seed)
            path = pathlib.Path(self.folder) / f"{arch}-{seed}-{num_classes}.{fmt}"
            (save_safetensors if fmt == "safetensors" else save_pth)(model.state_dict(), path)
            self._made[key] = model, path
        return self._made[key]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """`checkpoint(arch, seed=0, num_classes=1000)` -> (random timm model, its .safetensors), made once per module."""
    return RandomCheckpoints(tmp_path_factory.mktemp("checkpoints"))
