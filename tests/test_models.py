"""The models have exactly the paper's parameter counts (McMahan et al. 2017, section 3)."""
from fedmpi.models import build_model, count_parameters

MNIST = ((1, 28, 28), 10)


def test_2nn_has_199210_parameters():
    paper = (784 * 200 + 200) + (200 * 200 + 200) + (200 * 10 + 10)
    assert paper == 199_210
    assert count_parameters(build_model("2nn", *MNIST, seed=0)) == paper


def test_cnn_has_1663370_parameters():
    paper = (32 * 25 + 32) + (64 * 32 * 25 + 64) + (3136 * 512 + 512) + (512 * 10 + 10)
    assert paper == 1_663_370
    assert count_parameters(build_model("cnn", *MNIST, seed=0)) == paper
