"""The parts every published model card shares: front matter, the comparison with timm, the license.

Used by `converters.publish` (converted folders) and `convnext_hub.keras_hub.presets` (keras-hub presets).
"""

from checkpoints import NON_COMMERCIAL_LICENSES

HF_LICENSE_IDS = ("apache-2.0", "mit", "cc-by-4.0", "cc-by-nc-4.0", "bsd-3-clause")  # others: `license: other`


def front_matter(cfg, library, tags, pipeline_tag="image-classification"):
    """The Hub's YAML front matter lines: library, base model, license, pipeline tag, tags."""
    lines = ["---", f"library_name: {library}"]
    if cfg.get("hf_hub_id"):
        lines.append(f"base_model: {cfg['hf_hub_id']}")
    license_name = cfg.get("license")
    if license_name in HF_LICENSE_IDS:
        lines.append(f"license: {license_name}")
    elif license_name:
        lines += ["license: other", f"license_name: {license_name}"]
    if pipeline_tag:
        lines.append(f"pipeline_tag: {pipeline_tag}")
    return lines + ["tags:", *(f"- {tag}" for tag in tags), "---"]


def equivalence_line(equivalence):
    """One sentence from `convnext_hub.convert.verification.Report.as_dict()` (None: not measured)."""
    if not equivalence:
        return "Not measured (torch and timm were not installed where this model was published)."
    rows = ", ".join(
        f"{name} {out['max_abs_diff'] / max(out['max_abs_ref'], 1e-30):.2g}"
        for name, out in equivalence["outputs"].items()
    )
    return (
        f"Max |Δ| / max |timm| against timm with the same source weights, on a fixed random "
        f"{'x'.join(map(str, equivalence['input_shape']))} float32 input on CPU: {rows} "
        f"(bar {equivalence['tolerance']:g})."
    )


def license_line(license_name):
    if not license_name:
        return "The license of the source weights is not known: check it before use."
    note = " It allows non-commercial use only." if license_name in NON_COMMERCIAL_LICENSES else ""
    return f"The weights keep the license of the source checkpoint: {license_name}.{note}"
