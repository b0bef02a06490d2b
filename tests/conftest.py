import pytest
import torch

# Two cores are shared by the whole suite: one intra-op thread per test process keeps it predictable.
torch.set_num_threads(1)


@pytest.fixture
def runner():
    from click.testing import CliRunner

    return CliRunner()
