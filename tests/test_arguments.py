"""Every entry point refuses an unknown keyword argument with a TypeError that names it and the close matches,
before anything is built, read or downloaded."""

import importlib.util

import numpy as np
import pytest

import converters
import convnext_hub
from convnext_hub import config
from convnext_hub.arguments import check_keywords

pytestmark = pytest.mark.backend_independent

MISSPELT = {"num_clases": "num_classes", "drop_pth_rate": "drop_path_rate", "inputshape": "input_shape"}


def _refuses(call, function, misspelt="num_clases"):
    with pytest.raises(TypeError) as info:
        call(**{misspelt: 3})
    message = str(info.value)
    assert f"{function}() got an unexpected keyword argument {misspelt!r}" in message
    assert repr(MISSPELT[misspelt]) in message, message


@pytest.mark.parametrize("misspelt", sorted(MISSPELT))
def test_create_model(misspelt):
    _refuses(lambda **kw: convnext_hub.create_model("convnext_atto", **kw), "create_model", misspelt)


def test_family_factories_and_from_variant():
    _refuses(lambda **kw: convnext_hub.create_convnext_v1("atto", **kw), "create_convnext_v1")
    _refuses(lambda **kw: convnext_hub.create_convnext_v2("atto", **kw), "create_convnext_v2")
    _refuses(lambda **kw: convnext_hub.ConvNeXtV2.from_variant("atto", **kw), "ConvNeXtV2.from_variant")


def test_model_class():
    _refuses(lambda **kw: convnext_hub.ConvNeXt(depths=[1] * 4, dims=[8] * 4, **kw), "ConvNeXt")


def test_load_pretrained_refuses_before_looking_anything_up(tmp_path):
    """No download and no cache entry: the name below exists nowhere, yet the error is about the argument."""
    with config.settings(cache_dir=tmp_path / "cache"):
        _refuses(lambda **kw: convnext_hub.load_pretrained("no_such_model.anywhere", **kw), "load_pretrained")
    assert not (tmp_path / "cache").exists()


def test_convert_refuses_before_reading_the_state_dict():
    _refuses(lambda **kw: converters.convert({"not": np.zeros(1)}, **kw), "convert")


def test_keras_hub_classes_and_from_timm():
    pytest.importorskip("keras_hub")
    from convnext_hub.keras_hub import ConvNeXtBackbone, ConvNeXtImageClassifier, from_timm

    _refuses(lambda **kw: ConvNeXtBackbone(depths=[1] * 4, dims=[8] * 4, **kw), "ConvNeXtBackbone", "drop_pth_rate")
    backbone = ConvNeXtBackbone(depths=[1] * 4, dims=[8] * 4)
    with pytest.raises(TypeError, match=r"ConvNeXtImageClassifier\(\) got an unexpected keyword argument 'activaton'"):
        ConvNeXtImageClassifier(backbone, 3, activaton="softmax")
    _refuses(lambda **kw: from_timm("no_such_model.anywhere", **kw), "load_pretrained")


def test_settings_refuse_unknown_names():
    with pytest.raises(TypeError, match=r"settings\(\) got an unexpected keyword argument 'fastpath'; did you mean"):
        with config.settings(fastpath=False):
            pass


def test_no_close_match_still_names_the_argument():
    with pytest.raises(TypeError, match=r"^f\(\) got an unexpected keyword argument 'zzz'$"):
        check_keywords("f", {"zzz": 1}, ["num_classes"])


def test_converters_reexports_the_conversion_library():
    """`converters` lists the library's API statically (it must not import Keras to know it): the lists agree."""
    import convnext_hub.convert

    assert sorted(converters.__all__) == sorted(convnext_hub.convert.__all__)
    for name in converters.__all__:
        assert getattr(converters, name) is getattr(convnext_hub.convert, name)
    assert converters.verification is convnext_hub.convert.verification


def test_structural_defaults_have_one_source():
    """The model classes' signatures repeat the architecture table's defaults (for readable signatures):
    they must agree with `variants.DEFAULTS` and with each other."""
    import inspect

    from convnext_hub import variants
    from convnext_hub.model import STAGE_ARGUMENTS

    classes = [convnext_hub.ConvNeXt]
    if importlib.util.find_spec("keras_hub") is not None:
        from convnext_hub.keras_hub import ConvNeXtBackbone

        classes.append(ConvNeXtBackbone)
    for cls in classes:
        parameters = inspect.signature(cls.__init__).parameters
        assert set(STAGE_ARGUMENTS) <= set(parameters), cls
        for key, default in {**variants.DEFAULTS, "use_grn": False, "layer_scale_init_value": 1e-6}.items():
            if key in parameters:
                assert parameters[key].default == default, (cls.__name__, key)
