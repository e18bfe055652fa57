"""How close one CNN client step is to what this CPU core can compute (issue 28, config B's floor).

    python benchmarks/cnn_floor.py --data data/mnist-iid-100 --repeats 5

Times one client of the paper's CNN (E = 1, B = 10: 60 steps on 600 examples) trained by fedmpi's
engine as a worker trains it, on one thread, and counts the step's arithmetic: the multiply-adds of
the forward pass, of the input gradients (none for the first convolution, whose input is the data)
and of the weight gradients. It sets the resulting rate beside the rate of a large float32 matrix
product on the same thread (the BLAS's attainable peak), alternated in one run. A step at most of that
peak can only get faster by doing less arithmetic: config B's round is 3,000 such steps over the workers.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from fedmpi.data import Federation
from fedmpi.engine import Engine, FlatModel
from fedmpi.engine.inputs import inputs_for
from fedmpi.fedavg import client_generator
from fedmpi.models import build_model


def cnn_macs_per_example(c: int, h: int, w: int, classes: int) -> tuple[int, int]:
    """(forward, backward) multiply-adds of the paper's CNN (fedmpi.models.mnist.cnn) for one example."""
    conv1 = h * w * 32 * 25 * c
    conv2 = (h // 2) * (w // 2) * 64 * 25 * 32
    fc1 = 64 * (h // 4) * (w // 4) * 512
    fc2 = 512 * classes
    forward = conv1 + conv2 + fc1 + fc2
    backward = conv1 + 2 * (conv2 + fc1 + fc2)  # conv1: its weight gradient only
    return forward, backward


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="an MNIST federation folder (python -m data_prep)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    fed = Federation(args.data)
    client = tuple(torch.from_numpy(a) for a in fed.load_client(0))
    flat = FlatModel(build_model("cnn", fed.input_shape, fed.num_classes, 0), torch.device("cpu"), torch.float32)
    engine = Engine(flat, inputs_for(fed, torch.device("cpu"), torch.float32), 1, client, num_classes=fed.num_classes)
    start = flat.weights.clone()
    batch, n = 10, len(client[1])
    steps = -(-n // batch)
    forward, backward = cnn_macs_per_example(*fed.input_shape, fed.num_classes)
    flops_per_step = 2 * (forward + backward) * batch
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)

    def client_seconds():
        t = time.perf_counter()
        engine.train(start.clone(), [client], [client_generator(0, 1, 0)], 1, batch, 0.05)
        return time.perf_counter() - t

    def gemm_seconds():
        t = time.perf_counter()
        torch.mm(a, b)
        return time.perf_counter() - t

    client_seconds(), gemm_seconds()  # warm-up
    clients, gemms = [], []
    for _ in range(args.repeats):  # alternated: a change in the machine's load shows in both
        clients.append(client_seconds())
        gemms.append(gemm_seconds())
    step = statistics.median(clients) / steps
    cnn_rate = flops_per_step / step / 1e9
    peak = 2 * 2048**3 / statistics.median(gemms) / 1e9
    print(f"CNN step (B = {batch}, one thread): {step * 1e3:.2f} ms, {flops_per_step / 1e6:.0f} MFLOP "
          f"({forward * batch / 1e6:.0f} M multiply-adds forward, {backward * batch / 1e6:.0f} M backward)")
    print(f"rate: {cnn_rate:.1f} GFLOP/s; float32 2048^3 matrix product on one thread: {peak:.1f} GFLOP/s; "
          f"the step runs at {cnn_rate / peak:.2f} of it")
    print(f"config B's client work: 10 clients x 300 steps = {3000 * step:.1f} s of one core a round, "
          f"{1500 * step:.1f} s on 2 workers")


if __name__ == "__main__":
    main()
