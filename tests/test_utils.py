"""The pipeline's small dict helpers, on hand-written cases."""

import pytest

from jackpot_jax import utils


def test_flatten_and_nest_are_inverse():
    nested = {"conv1": {"kernel": 1, "bias": 2}, "layer1_0": {"bn1": {"scale": 3}}, "fc": 4}
    flat = {"conv1/kernel": 1, "conv1/bias": 2, "layer1_0/bn1/scale": 3, "fc": 4}
    assert utils.flatten_dict(nested) == flat
    assert utils.nest_dict(flat) == nested
    assert utils.flatten_dict({"a": {"b": 1}}, sep=".") == {"a.b": 1}
    assert utils.nest_dict({}) == {} and utils.flatten_dict({}) == {}


@pytest.mark.parametrize("flat", [{"a": 1, "a/b": 2}, {"a/b": 2, "a": 1}])
def test_nest_refuses_a_path_that_is_a_prefix_of_another(flat):
    with pytest.raises(ValueError, match="clashes with another path"):
        utils.nest_dict(flat)
