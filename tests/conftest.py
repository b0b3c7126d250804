import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_double():
    torch.manual_seed(0xDEADBEEF)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
