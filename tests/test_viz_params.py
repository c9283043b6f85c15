"""visualize.* in params.yaml: strict keys, counts of at least 1, defaults that need no model."""

import copy
from pathlib import Path

import pytest
import yaml

from cifarlab.errors import ParamsError
from cifarlab.params import VisualizeParams, load_params, parse_params

ROOT = Path(__file__).resolve().parent.parent
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_visualize(**changes):
    raw = copy.deepcopy(RAW)
    raw["visualize"].update(changes)
    return raw


def test_shipped_section_matches_the_schema_defaults():
    shipped = load_params(ROOT / "params.yaml").visualize
    assert shipped == VisualizeParams()
    assert RAW["visualize"] == {}  # every key keeps the schema's default; -S ++visualize.<key>=... sets one
    assert shipped.kernels_layer == shipped.gradcam_layer == shipped.feature_layers == "auto"


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("gradcam_images", 0, "greater than or equal to 1"),
        ("feature_images", 0, "greater than or equal to 1"),
        ("embedding_images", 0, "greater than or equal to 1"),
        ("grid_images", 0, "greater than or equal to 1"),
        ("feature_channels", 0, "greater than or equal to 1"),
        ("batch_size", 0, "greater than or equal to 1"),
        ("device", "tpu", "auto, cpu"),
        ("kernels_layer", "", "at least 1 character"),
        ("feature_layers", [], "non-empty list"),
        ("classes", "cat", "valid list"),
        ("grad_cam_layer", "conv2", "unknown key"),
    ],
)
def test_bad_values_name_the_key_and_value(key, value, words):
    with pytest.raises(ParamsError) as err:
        parse_params(with_visualize(**{key: value}))
    msg = str(err.value)
    assert msg.startswith(f"params.yaml: visualize.{key}"), msg
    assert words in msg, msg
    if isinstance(value, int) and words.startswith("greater"):
        assert "(got 0)" in msg


def test_a_single_layer_name_becomes_a_list():
    p = parse_params(with_visualize(feature_layers="conv2", classes=[3, "dog"]))
    assert p.visualize.feature_layers == ["conv2"]
    assert p.visualize.classes == [3, "dog"]
    assert parse_params(with_visualize(feature_layers=["conv1", "conv2"])).visualize.feature_layers == [
        "conv1",
        "conv2",
    ]
