"""The client engine: clients trained together come out as if each were trained alone, alone as plain SGD.

- One client at a time (engine.loop) equals a torch.optim.SGD loop written here, in float64.
- An MLP stack on a CPU (engine.mlp, the default) equals one at a time bit for bit, and a client's
  result does not depend on which clients share its stack: that is what keeps results independent
  of the rank count (a worker stacks whichever clients it is dealt).
- A vmap stack (engine.stacked, the CUDA path, forced here on the CPU) equals one at a time for the
  CNN and for models with BatchNorm, GroupNorm and LayerNorm: allclose 1e-9 in float64 (both paths
  compute the same sums in another order), and 1e-5 in float32 over four SGD steps: 80 float32 ulps
  of the largest weight (1.0); measured 0.6-3e-7 on an AMD EPYC, both paths as far from the float64
  result as from each other, so another CPU's summation order has 30x room. Not in float32:
  BatchNorm2d right after a convolution, whose float32 gradients are off by ~1e-4 from float64 after
  one step in either path (measured), so the two paths differ by as much; the float64 case checks it.
"""
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedmpi.data import Federation
from fedmpi.engine import Engine, FlatModel
from fedmpi.engine.inputs import Normalizer
from fedmpi.fedavg import client_generator
from fedmpi.models import build_model

sys.path.insert(0, str(Path(__file__).parent))  # user_models
ROUND, LR = 3, 0.05
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@pytest.fixture(scope="module")
def fed(federation):
    torch.set_num_threads(1)
    return Federation(federation("iid", clients=20))


MOMENTUM_WD = dict(momentum=0.9, weight_decay=0.01)  # the clients' torch.optim.SGD options (Engine's keywords)


def make_engine(fed, model, stack, dtype=torch.float32, seed=4, **options):
    flat = FlatModel(build_model(model, fed.input_shape, fed.num_classes, seed), torch.device("cpu"), dtype)
    norm = fed.manifest["normalize"]
    clients = [tuple(map(torch.from_numpy, fed.load_client(k))) for k in range(4)]
    return Engine(flat, Normalizer(norm["mean"], norm["std"], "cpu", dtype), stack, clients[0], **options), clients


def train(engine, clients, ks, epochs, batch):
    return engine.train(engine.flat.weights.clone(), [clients[k] for k in ks],
                        [client_generator(0, ROUND, k) for k in ks], epochs, batch, LR)


@pytest.mark.parametrize("options", [{}, MOMENTUM_WD], ids=["plain", "momentum-wd"])
def test_one_client_at_a_time_is_plain_sgd(fed, options):
    """With momentum and weight decay: torch.optim.SGD's, whose weight decay acts on the parameters (biases
    too) and not on BatchNorm's running statistics, which this model has."""
    engine, clients = make_engine(fed, "user_models:bn_net", 1, torch.float64, **options)
    if options:  # 2 epochs of 10 steps: momentum at work, in a sixth of the time of the whole client
        clients[2] = tuple(t[:500] for t in clients[2])
    start = engine.flat.weights.clone()
    weights, losses = train(engine, clients, [2], epochs=2, batch=50)
    # The reference: the same model built afresh, a plain forward and torch.optim.SGD.
    model = build_model("user_models:bn_net", fed.input_shape, fed.num_classes, seed=4).double()
    x, y = clients[2]
    norm = fed.manifest["normalize"]
    mean, std = (torch.tensor(norm[k], dtype=torch.float64).view(-1, 1, 1) for k in ("mean", "std"))
    x = (x.double() / 255 - mean) / std
    opt = torch.optim.SGD(model.parameters(), lr=LR, **options)
    gen = client_generator(0, ROUND, 2)
    for _ in range(2):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 50):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[order[i:i + 50]]), y[order[i:i + 50]]).backward()
            opt.step()
    reference = dict([*model.named_parameters(), *model.named_buffers()])
    for name in engine.flat.layout:  # the parameters, then the running statistics
        got = engine.flat.view(weights[0], name)
        assert torch.allclose(got, reference[name], rtol=0, atol=1e-12), name
        assert name.endswith("running_var") or not torch.equal(got, engine.flat.view(start, name)), name
    assert len(losses) == 1


@pytest.mark.parametrize("epochs,batch", [(1, 10), (2, 50), (1, 0)])
def test_mlp_stack_equals_clients_trained_alone(fed, epochs, batch):
    """The stacked MLP (batched products) against nn.Linear one client at a time: other BLAS routines,
    whose float32 rounding may differ by CPU, so compared in float64 (rounding ~1e-16 a step)."""
    stacked, clients = make_engine(fed, "2nn", 0, torch.float64)
    alone, _ = make_engine(fed, "2nn", 1, torch.float64)
    assert "stacked MLP" in stacked.describe() and "one client at a time" in alone.describe()
    weights, losses = train(stacked, clients, range(4), epochs, batch)
    for k in range(4):
        w, loss = train(alone, clients, [k], epochs, batch)
        assert torch.allclose(weights[k], w[0], rtol=0, atol=1e-12), f"client {k}"
        assert losses[k] == pytest.approx(loss[0], rel=1e-12)
    assert not torch.equal(weights[0], stacked.flat.weights)  # it did train


@pytest.mark.parametrize("options", [{}, MOMENTUM_WD], ids=["plain", "momentum-wd"])
@pytest.mark.parametrize("batch", [10, 50])
def test_a_client_does_not_depend_on_its_stack(fed, batch, options):
    engine, clients = make_engine(fed, "2nn", 0, **options)
    all4, losses4 = train(engine, clients, [0, 1, 2, 3], 1, batch)
    for ks in ([3], [1, 2], [3, 0, 2]):
        part, losses = train(engine, clients, ks, 1, batch)
        for row, k in enumerate(ks):
            assert torch.equal(part[row], all4[k]), f"client {k} in stack {ks}"
            assert losses[row] == losses4[k]


@pytest.mark.parametrize("model,precision,tol", [
    *((m, "float32", 1e-5) for m in ("cnn", "user_models:bn_mlp", "user_models:norm_net")),
    *((m, "float64", 1e-9) for m in ("cnn", "user_models:bn_net", "user_models:bn_mlp", "user_models:norm_net"))])
def test_vmap_stack_equals_clients_trained_alone(fed, model, precision, tol):
    dtype = DTYPES[precision]
    stacked, clients = make_engine(fed, model, 3, dtype)
    alone, _ = make_engine(fed, model, 1, dtype)
    assert "vmap" in stacked.describe()
    clients = [(x[:100], y[:100]) for x, y in clients]  # 2 epochs of 2 steps: quick in float64 too
    start = stacked.flat.weights.clone()
    weights, losses = train(stacked, clients, [0, 1, 2], 2, 50)
    for k in range(3):
        w, loss = train(alone, clients, [k], 2, 50)
        assert torch.allclose(weights[k], w[0], rtol=0, atol=tol), \
            f"client {k}: max difference {(weights[k] - w[0]).abs().max():.2e}"
        assert losses[k] == pytest.approx(loss[0], rel=tol)
        assert (w[0] - start).abs().max() > 100 * tol  # it trained, far more than the tolerance


def test_batchnorm_statistics_are_trained_per_client(fed):
    engine, clients = make_engine(fed, "user_models:bn_net", 3)
    weights, _ = train(engine, clients, [0, 1, 2], 1, 50)
    mean = engine.flat.layout["features.1.running_mean"]
    stats = weights[:, mean[0]:mean[0] + 8]
    assert not torch.equal(stats[0], stats[1])  # each client's own data moved its own statistics
    assert torch.equal(engine.flat.weights[mean[0]:mean[0] + 8], torch.zeros(8))  # the start is untouched


def test_a_model_vmap_cannot_stack_is_trained_one_at_a_time_and_says_why(fed):
    engine, clients = make_engine(fed, "user_models:dropout_net", 4)
    assert "cannot be stacked" in engine.describe() and "random" in engine.describe()
    first, _ = train(engine, clients, [1], 1, 50)
    again, _ = train(engine, clients, [1], 1, 50)
    assert torch.equal(first, again)  # dropout draws from (seed, round, client) alone


@pytest.mark.parametrize("options", [{}, MOMENTUM_WD], ids=["plain", "momentum-wd"])
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_clients_of_unequal_sizes_stacked_equal_each_alone_bitwise(fed, precision, options):
    """Stacked MLP clients are padded to B rows per batch and masked, alone or not: a client's numbers
    do not depend on the sizes of the clients beside it (what keeps unequal federations independent of
    the rank count), and they equal the unpadded one-at-a-time path up to rounding. With momentum, a
    client whose steps have run out keeps its momentum buffer for its next epoch, as if alone."""
    dtype = DTYPES[precision]
    engine, clients = make_engine(fed, "2nn", 0, dtype, **options)
    alone, _ = make_engine(fed, "2nn", 1, dtype, **options)
    clients = [(x[:n], y[:n]) for (x, y), n in zip(clients, (37, 50, 13, 101))]
    assert engine.stacks([37, 50, 13, 101], 10) == [[2, 0, 1, 3]]  # one stack, smallest first
    together, losses = train(engine, clients, [0, 1, 2, 3], 2, 10)
    for k in range(4):
        single, loss = train(engine, clients, [k], 2, 10)
        assert torch.equal(together[k], single[0]) and losses[k] == loss[0], f"client {k}"
        reference, _ = train(alone, clients, [k], 2, 10)
        tol = 1e-5 if precision == "float32" else 1e-12
        assert torch.allclose(together[k], reference[0], rtol=0, atol=tol), f"client {k}"
        assert (together[k] - engine.flat.weights).abs().max() > 1e-3


def test_vmap_stacks_of_unequal_clients_padded_to_a_bucket_equal_each_alone(fed):
    """The CUDA path pads a stack to a few shapes (rows and examples, Engine.shape): 3 clients of 37, 64
    and 100 examples train as 4 rows of 128, the extra row and positions fully masked; each client still
    equals itself trained alone (float64, as test_vmap_stack_equals_clients_trained_alone)."""
    stacked, clients = make_engine(fed, "cnn", 4, torch.float64)
    alone, _ = make_engine(fed, "cnn", 1, torch.float64)
    clients = [(x[:n], y[:n]) for (x, y), n in zip(clients, (37, 64, 100))]
    assert stacked.shape([37, 64, 100], 50) == (4, 128, 150)
    weights, losses = train(stacked, clients, [0, 1, 2], 1, 50)
    assert weights.shape[0] == 3
    for k in range(3):
        w, loss = train(alone, clients, [k], 1, 50)
        assert torch.allclose(weights[k], w[0], rtol=0, atol=1e-9), f"client {k}"
        assert losses[k] == pytest.approx(loss[0], rel=1e-9)


def test_500_rounds_of_unbalanced_clients_need_a_few_graph_shapes(fed):
    """What bounds the CUDA graphs a long run captures (one per stack shape): 1,000 clients of lognormal
    sizes (10 to ~3,000 examples), 50 a round on 2 workers, stacks of up to 16, B = 10."""
    from fedmpi.engine.stacked import MAX_GRAPHS
    from fedmpi.fedavg import assign_to_workers, plan_round

    engine, _ = make_engine(fed, "cnn", 16)
    sizes = (np.random.default_rng(0).lognormal(4, 1, 1000) + 10).astype(np.int64)
    shapes, exact = set(), set()
    for round_ in range(1, 501):
        sampled = plan_round(0, round_, 1000, 50)
        owners = assign_to_workers(sampled, sizes[sampled], 2, 1000)
        for worker in range(2):
            mine = [int(sizes[k]) for k in sampled[owners == worker]]
            for stack in engine.stacks(mine, 10):
                shapes.add(engine.shape([mine[i] for i in stack], 10))
                exact.add((len(stack), max(mine[i] for i in stack)))
    print(f"{len(shapes)} padded stack shapes, {len(exact)} exact ones")
    assert len(shapes) <= MAX_GRAPHS < len(exact)


def test_cuda_graphs_are_keyed_by_every_number_they_bake_in():
    """A graph replays the η, μ, momentum, weight decay and limit it was captured with, so each is in its key
    (shown with the capture replaced: this runs without a GPU); the offsets are inputs, copied in."""
    from fedmpi.engine import Rule
    from fedmpi.engine.stacked import GraphedTraining

    graphed, captured = GraphedTraining(None), []

    def capture(inputs, batch, lr, rule, limit):
        captured.append((lr, rule and rule._replace(offset=None), limit))
        return SimpleNamespace(replay=lambda: None), [None if t is None else t.clone() for t in inputs], \
            torch.zeros(2)

    graphed._capture = capture
    rows, orders = torch.zeros(2, 5), torch.zeros(2, 1, 3, dtype=torch.int64)
    offset = torch.zeros(2, 4)
    rules = [None, Rule(4, momentum=0.9), Rule(4, momentum=0.5), Rule(4, weight_decay=0.01),
             Rule(4, 0.1, offset), Rule(4, 0.1, offset, momentum=0.9)]
    for rule in rules + [Rule(4, 0.1, offset + 1)] + rules:  # other offsets, then all again: no new capture
        graphed(rows, rows, rows, orders, None, None, 3, 0.1, rule)
    graphed(rows, rows, rows, orders, None, None, 3, 0.05, rules[1])
    graphed(rows, rows, rows, orders, None, None, 3, 0.05, rules[1], 2)  # a partial client's limit on steps
    assert len(captured) == len(rules) + 2 == len(set(captured))
