"""The size family: one dial, shapes that follow it, parameter counts equal to the built model's."""

from __future__ import annotations

import pytest

from scratchlm.errors import ConfigError
from scratchlm.model import GPT, ModelConfig
from scratchlm.scaling.family import FamilyConfig, depth_for_params, flops_per_token, member, params


def test_depth_4_of_the_default_family_is_the_quickstart_model() -> None:
    quickstart = ModelConfig.from_preset("shakespeare-char")
    assert member(FamilyConfig(), 4, 65) == quickstart
    assert params(FamilyConfig(), 4, 65) == 800_000


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_shapes_follow_the_depth_and_counts_match_the_built_model(depth: int) -> None:
    family = FamilyConfig(aspect=16, head_dim=16, context_length=32)
    config = member(family, depth, 50)
    assert (config.n_layer, config.d_model, config.n_head, config.head_dim) == (depth, 16 * depth, depth, 16)
    assert config.d_ff == 8 * -(
        -16 * depth * 8 // 3 // 8
    )  # SwiGLU: 8/3 d_model rounded up to a multiple of 8
    assert params(family, depth, 50) == sum(p.numel() for p in GPT(config).parameters())


def test_flops_conventions() -> None:
    family = FamilyConfig()
    n = params(family, 3, 65)
    assert flops_per_token(family, 3, 65, "6N") == 6 * n
    # the planner adds attention (12 n_layer context d_model per token) to 6 x the matmul weights
    assert flops_per_token(family, 3, 65, "planner") > 6 * n
    with pytest.raises(ConfigError, match="use 6N or planner"):
        flops_per_token(family, 3, 65, "7N")


def test_nearest_member_by_size() -> None:
    family = FamilyConfig()
    assert depth_for_params(family, 800_000, 65) == 4
    assert depth_for_params(family, 700_000, 65) == 4
    assert depth_for_params(family, 20_000, 65) == 1


def test_an_odd_aspect_is_refused() -> None:
    with pytest.raises(ConfigError, match="family aspect must be even"):
        FamilyConfig(aspect=15)
