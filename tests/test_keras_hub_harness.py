"""keras-hub's own model-test harness (`keras_hub.src.tests.test_case.TestCase`) on our keras-hub classes,
as keras-hub tests its own vision models: backbone (both data formats, pyramid outputs, serialization,
precision, quantization), saving, the task with its preprocessor (predict and fit, with and without split
preprocessing), and LiteRT export where the harness runs it.

The harness checks that a backbone's default name is its class name in snake case (`conv_ne_xt_backbone`
for `ConvNeXtBackbone`); ours is `convnext_backbone`, the name users and presets know, so the tests pass
the harness's name in `init_kwargs` rather than renaming every saved backbone.
"""

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from keras_hub.src.tests.test_case import TestCase  # noqa: E402

from convnext_hub.keras_hub import (  # noqa: E402
    ConvNeXtBackbone,
    ConvNeXtImageClassifier,
    ConvNeXtImageClassifierPreprocessor,
    ConvNeXtImageConverter,
)

SIZE = 64
GEOMETRIES = {
    "v1": dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32], use_grn=False, layer_scale_init_value=1e-6),
    "v2": dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32], use_grn=True, layer_scale_init_value=None, conv_mlp=True),
}
HARNESS_NAME = "conv_ne_xt_backbone"  # the harness's snake case of the class name (see the module docstring)


class ConvNeXtHarnessTest(TestCase):
    def images(self, batch=2):
        """Backend tensors, as keras-hub's own tests pass (Keras' `compute_output_spec`, which the
        harness calls, takes no NumPy arrays)."""
        return keras.ops.convert_to_tensor(np.random.RandomState(0).uniform(0, 1, (batch, SIZE, SIZE, 3)), "float32")

    def backbone_kwargs(self, geometry):
        return {**GEOMETRIES[geometry], "image_shape": (SIZE, SIZE, 3), "name": HARNESS_NAME}

    def test_vision_backbone(self):
        for geometry in GEOMETRIES:
            self.run_vision_backbone_test(
                cls=ConvNeXtBackbone,
                init_kwargs=self.backbone_kwargs(geometry),
                input_data=self.images(),
                expected_output_shape=(2, SIZE // 32, SIZE // 32, 32),
                expected_pyramid_output_keys=["P2", "P3", "P4", "P5"],
                expected_pyramid_image_sizes=[(SIZE // s, SIZE // s) for s in (4, 8, 16, 32)],
                run_quantization_check=True,
            )

    def test_backbone_saving(self):
        self.run_model_saving_test(
            cls=ConvNeXtBackbone, init_kwargs=self.backbone_kwargs("v2"), input_data=self.images()
        )

    def classifier_kwargs(self):
        backbone = ConvNeXtBackbone(**{**self.backbone_kwargs("v1"), "image_shape": (None, None, 3)})
        converter = ConvNeXtImageConverter(image_size=(SIZE, SIZE), scale=1 / 255.0)
        return {
            "backbone": backbone,
            "num_classes": 3,
            "preprocessor": ConvNeXtImageClassifierPreprocessor(image_converter=converter),
        }

    def test_task(self):
        images = np.random.RandomState(1).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
        labels = np.array([0, 1, 2, 1])
        self.run_task_test(
            cls=ConvNeXtImageClassifier,
            init_kwargs=self.classifier_kwargs(),
            train_data=(images, labels),
            expected_output_shape=(4, 3),
        )

    def test_task_saving(self):
        self.run_model_saving_test(
            cls=ConvNeXtImageClassifier, init_kwargs=self.classifier_kwargs(), input_data=self.images() * 255
        )

    def test_litert_export(self):
        """The harness decides where LiteRT export runs (and says why it skips elsewhere)."""
        self.run_litert_export_test(
            cls=ConvNeXtBackbone, init_kwargs=self.backbone_kwargs("v2"), input_data=self.images(1)
        )
