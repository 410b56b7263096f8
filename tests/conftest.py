import os

import pytest
import torch

# A fixed profile keeps CI time bounded; HYPOTHESIS_PROFILE=thorough runs more examples.
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.register_profile("thorough", max_examples=600, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover
    pass


def heavy_tailed(*shape, outlier_channels=4, outlier_scale=100.0, dof=3.0, generator=None):
    """Student-t activations with a few channels blown up, like real LLM activations."""
    t = torch.distributions.StudentT(torch.tensor(dof)).sample(shape)
    k = shape[-1]
    idx = torch.randperm(k, generator=generator)[:outlier_channels]
    t[..., idx] *= outlier_scale
    return t


@pytest.fixture
def activations():
    return heavy_tailed
