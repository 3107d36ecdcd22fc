"""NetConfig validation and range parsing: clear errors naming field, value and choices."""

import numpy as np
import pytest

import gradjax as gj


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"depth": 0}, "depth=0"),
        ({"width": -3}, "width=-3"),
        ({"depth": 2.5}, "depth=2.5"),
        ({"activation": "sigmod"}, "activation='sigmod'"),
        ({"init": "xavier"}, "init='xavier'"),
        ({"sigma_w": -1.0}, "sigma_w=-1.0"),
        ({"sigma_w": float("nan")}, "sigma_w=nan"),
        ({"sigma_b": float("inf")}, "sigma_b=inf"),
        ({"norm": "group"}, "norm='group'"),
        ({"residual": "dense"}, "residual='dense'"),
        ({"residual": "scaled", "residual_alpha": -0.5}, "residual_alpha=-0.5"),
        ({"residual_alpha": 0.5}, "residual_alpha=0.5"),
        ({"dtype": "float16"}, "dtype='float16'"),
        ({"residual": "plain", "residual_block": "v2"}, "residual_block='v2'"),
        ({"residual_block": "post"}, "residual_block='post'"),
        ({"residual": "plain", "branch_layers": 3}, "branch_layers=3"),
        ({"residual": "plain", "branch_layers": True}, "branch_layers=True"),
        ({"branch_layers": 2}, "branch_layers=2"),
        (
            {"residual": "plain", "residual_block": "act_branch", "branch_layers": 2},
            "branch_layers=2",
        ),
    ],
)
def test_bad_config_raises_one_clear_line(changes, field):
    kwargs = {"depth": 4, "width": 8, **changes}
    with pytest.raises(gj.GradjaxInputError) as err:
        gj.NetConfig(**kwargs)
    message = str(err.value)
    assert field in message and "expected" in message and "\n" not in message


def test_config_is_hashable_and_replace_validates():
    cfg = gj.NetConfig(depth=3, width=4)
    assert hash(cfg) == hash(gj.NetConfig(depth=3, width=4))
    assert cfg.replace(depth=5).depth == 5
    with pytest.raises(gj.GradjaxInputError):
        cfg.replace(depth=-1)


def test_scaled_residual_alpha_defaults_to_inverse_sqrt_depth():
    assert gj.NetConfig(depth=16, width=4, residual="scaled").alpha == pytest.approx(0.25)


@pytest.mark.parametrize(
    "text, expected", [("0.5:2.5:5", [0.5, 1.0, 1.5, 2.0, 2.5]), ("1,2,4", [1, 2, 4]), ("3", [3])]
)
def test_parse_range(text, expected):
    np.testing.assert_allclose(gj.config.parse_range("--sigma-w", text), expected)


@pytest.mark.parametrize("text", ["1:2", "a:b:3", "1:2:0", "", "1,nan", "1:2:3:4"])
def test_parse_range_rejects_malformed(text):
    with pytest.raises(gj.GradjaxInputError, match="--sigma-w="):
        gj.config.parse_range("--sigma-w", text)


def test_input_dim_defaults_to_width_and_follows_it_through_replace():
    cfg = gj.NetConfig(depth=2, width=8)
    assert cfg.input_dim == 8
    assert cfg == gj.NetConfig(depth=2, width=8, input_dim=8)
    assert hash(cfg) == hash(gj.NetConfig(depth=2, width=8, input_dim=8))
    assert cfg.replace(width=16).input_dim == 16
    explicit = gj.NetConfig(depth=2, width=8, input_dim=3)
    assert explicit.replace(width=16).input_dim == 3
    assert cfg.replace(input_dim=5).replace(width=16).input_dim == 5
    with pytest.raises(gj.GradjaxInputError, match="input_dim"):
        gj.NetConfig(depth=2, width=8, input_dim=0)
