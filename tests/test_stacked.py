"""fedmpi.stacked: clients of an MLP trained together must each come out exactly as if trained alone.

That equality is what keeps results independent of the rank count (a worker
stacks whichever clients it was dealt), so it is checked bit for bit: against
the per-client path (nn.Linear + autograd, as on a GPU), and between stacks of
different sizes and make-up. The per-client path itself is compared with a
torch.optim.SGD loop in test_fedavg_reference.py.
"""
import pytest
import torch

from fedmpi.data import Federation
from fedmpi.fedavg import FlatModel, Normalizer, client_generator, local_update
from fedmpi.models import build_model
from fedmpi.stacked import StackedMLP, stackable

ROUND = 3


@pytest.fixture(scope="module")
def setup(federation):
    torch.set_num_threads(1)
    fed = Federation(federation("iid", clients=20))
    clients = [tuple(map(torch.from_numpy, fed.load_client(k))) for k in range(5)]
    norm = Normalizer(fed.manifest["normalize"]["mean"], fed.manifest["normalize"]["std"], "cpu")
    flat = FlatModel(build_model("2nn", fed.image_shape, fed.num_classes, seed=4), torch.device("cpu"))
    return flat, clients, norm


def stacked(setup, ks, epochs, batch):
    flat, clients, norm = setup
    return StackedMLP(flat).train(flat.weights.clone(), [clients[k] for k in ks],
                                  [client_generator(0, ROUND, k) for k in ks], epochs, batch, 0.1, norm)


@pytest.mark.parametrize("epochs,batch", [(1, 10), (2, 50), (1, 0)])
def test_stacked_clients_equal_clients_trained_alone_with_nn_linear(setup, epochs, batch):
    flat, clients, norm = setup
    start = flat.weights.clone()
    weights, losses = stacked(setup, range(5), epochs, batch)
    for k, (x, y) in enumerate(clients):
        flat.weights.copy_(start)
        loss = local_update(flat, x, y, epochs, batch, 0.1, client_generator(0, ROUND, k), norm)
        assert torch.equal(weights[k], flat.weights), f"client {k}"
        assert losses[k] == pytest.approx(loss, rel=1e-6)  # a mean over B, summed in another order
    flat.weights.copy_(start)
    assert not torch.equal(weights[0], start)  # it did train


@pytest.mark.parametrize("batch", [10, 50])
def test_a_client_does_not_depend_on_its_stack(setup, batch):
    all5, losses5 = stacked(setup, [0, 1, 2, 3, 4], 1, batch)
    for ks in ([3], [1, 2], [4, 0, 2]):
        part, losses = stacked(setup, ks, 1, batch)
        for row, k in enumerate(ks):
            assert torch.equal(part[row], all5[k]), f"client {k} in stack {ks}"
            assert losses[row] == losses5[k]


def test_only_mlps_on_a_cpu_are_stacked():
    assert stackable(FlatModel(build_model("2nn", (1, 28, 28), 10, 0), torch.device("cpu")))
    assert not stackable(FlatModel(build_model("cnn", (1, 28, 28), 10, 0), torch.device("cpu")))
