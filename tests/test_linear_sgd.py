"""engine.linear_sgd: a Linear layer that steps itself in backward is plain SGD, exactly.

Checked against autograd + a textbook SGD step on the same model, in float64 (where the
fused GEMM and the separate gradient can differ only by rounding far below what a wrong
formula would give), over a client's worth of steps of the 2NN and the CNN on real MNIST.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from fedmpi.data import Federation
from fedmpi.engine import FlatModel
from fedmpi.engine.linear_sgd import FusedLinearLayers
from fedmpi.models import build_model

LR = 0.05


@pytest.fixture(scope="module")
def client(federation):
    fed = Federation(federation("iid", clients=20))
    x, y = fed.load_client(0)
    return fed, torch.from_numpy(x).double() / 255, torch.from_numpy(y)


@pytest.mark.parametrize("model", ["2nn", "cnn"])
def test_fused_steps_equal_autograd_and_sgd_in_float64(client, model):
    fed, x, y = client
    fused = build_model(model, fed.input_shape, fed.num_classes, seed=1).double()
    plain = copy.deepcopy(fused)
    FusedLinearLayers(fused).lr = LR
    for i in range(0, 600, 10):
        xb, yb = x[i:i + 10], y[i:i + 10]
        F.cross_entropy(fused(xb), yb).backward()
        F.cross_entropy(plain(xb), yb).backward()
        with torch.no_grad():
            for p in fused.parameters():  # only the convolutions have gradients
                if p.grad is not None:
                    p -= LR * p.grad
                    p.grad = None
            for p in plain.parameters():
                p -= LR * p.grad
                p.grad = None
    start = build_model(model, fed.input_shape, fed.num_classes, seed=1).double()
    for (name, a), b, s in zip(fused.named_parameters(), plain.parameters(), start.parameters()):
        assert (b - s).abs().max() > 1e-3, name  # it trained
        assert (a - b).abs().max() < 1e-12, name


def test_linear_layers_get_no_gradient_and_the_rest_do(client):
    fed, x, y = client
    flat = FlatModel(build_model("cnn", fed.input_shape, fed.num_classes, seed=1), torch.device("cpu"))
    FusedLinearLayers(flat.model).lr = LR
    F.cross_entropy(flat.model(x[:10].float()), y[:10]).backward()
    for name, p in flat.model.named_parameters():
        assert (p.grad is None) == name.startswith(("7.", "9.")), name  # the two Linear layers
