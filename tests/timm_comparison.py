"""The tests' comparison with a reference model: `convnext_hub.convert.verification`, the project's one comparison.

`convnext_hub.convert.verification.compare(model, reference, images)` compares every stage map and the logits
of a Keras ConvNeXt with a timm module, each against max|reference| (bar `TOLERANCE` = 1e-5); it is
what `timm_to_keras --verify` and `publish` use. The helpers here only turn its `Report` into test
assertions, and hold references that are not timm modules (Hugging Face transformers models) to the
same bar through `Comparison`. `test_equivalence.py::test_the_comparison_fails_a_wrong_model`
proves that the comparison catches a wrong model.
"""

import numpy as np

from convnext_hub.convert.verification import (  # noqa: F401  (re-exported: the tests' one import for comparisons)
    STAGE_NAMES,
    TOLERANCE,
    Comparison,
    compare,
    random_images,
    timm_outputs,
    timm_reference,
)


def assert_matches_timm(model, reference, images_nhwc, what="", *, logits=True, head_loaded=True):
    """`model` equals timm module `reference` on `images_nhwc`: four stage maps and (with `logits`) the
    logits, each within TOLERANCE x max|timm|. Returns the `Report`."""
    report = compare(model, reference, images_nhwc, head_loaded=head_loaded)
    compared = [c.name for c in report.comparisons]
    expected = [*STAGE_NAMES, "logits"] if logits else list(STAGE_NAMES)
    assert compared == expected, f"{what}: compared {compared}, expected {expected} (skipped: {report.skipped})"
    assert report.passed, f"{what} on {report.input_shape}:\n" + "\n".join(report.lines())
    return report


def assert_close(actual, expected, what):
    """`actual` equals `expected` within TOLERANCE x max|expected| (the bar of `compare`); the relative error."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    comparison = Comparison(what, float(np.abs(actual - expected).max()), float(np.abs(expected).max()))
    assert comparison.passed, comparison.line()
    return comparison.relative
