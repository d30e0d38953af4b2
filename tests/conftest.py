import os

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test: under `pytest -n 2` on 2 cores, 2 threads per
    process make every small op wait for a descheduled OpenMP thread (several times slower)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
