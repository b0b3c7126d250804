import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Hypothesis profiles: "short" (the default: few examples, derandomized so CI is repeatable) and
# "long" for deep runs: python -m pytest tests/test_fuzz.py --hypothesis-profile=long
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("short", max_examples=30, deadline=None, derandomize=True,
                          database=None, suppress_health_check=_SLOW_OK, print_blob=True)
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=_SLOW_OK, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "short"))


@pytest.fixture(autouse=True)
def _seed_and_double():
    torch.manual_seed(0xDEADBEEF)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one thread avoids hand-offs that cost more than the ops themselves
    (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
