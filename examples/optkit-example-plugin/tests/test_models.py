"""The model source example:NAME, through the host as a pipeline's model.source."""

from __future__ import annotations

from torch import nn

from optkit.testing import load_source, raises_user_error
from optkit_example_plugin.scaled_conv import ScaledConv


def test_example_scaled_stem_builds_the_model_with_its_kwargs():
    model = load_source("example:scaled_stem", kwargs={"num_classes": 3})
    assert isinstance(model[0], ScaledConv) and isinstance(model[-1], nn.Linear) and model[-1].out_features == 3


def test_an_unknown_name_is_the_users_error_with_a_suggestion():
    with raises_user_error(r"^model.source \(example:scaled_stm\): no example model 'scaled_stm'; did you mean 'scaled_stem'\?"):
        load_source("example:scaled_stm")


def test_an_unknown_keyword_is_the_users_error():
    with raises_user_error(r"^model.kwargs: .*'depth'"):
        load_source("example:scaled_stem", kwargs={"depth": 3})
