"""`python -m fedmpi.check`: does this node's device train as the CPU's float64 reference does?

What a user runs on a new GPU node before a long job (it runs in CI on the CPU too): one stack of a
federation's clients trained for one round from the model's initial weights, three ways:

- the engine on the device as a job would use it (on CUDA: a vmap stack replayed from a CUDA graph);
- the same stack eagerly (on CUDA: without graphs);
- each client alone, one at a time, in float64 on the CPU: the reference.

It prints the largest difference of each from the reference, the seconds the clients take and the memory
it needed, and exits 1 when a difference exceeds the tolerance (float32 rounding over ten
steps), 0 otherwise.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

from fedmpi.errors import FedMPIError

TOLERANCE = 1e-4  # float32 against float64 after 10 local steps of the paper's models: measured below 1e-6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedmpi.check", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="federation folder (python -m data_prep)")
    p.add_argument("--model", default="cnn", help="a built-in model or package.module:function (default cnn)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--clients", type=int, default=4, help="clients in the stack (default 4)")
    p.add_argument("--examples", type=int, default=100, help="each client's first N examples (default 100: "
                   "10 steps, few enough that float32 stays close to float64)")
    p.add_argument("--epochs", type=int, default=1, help="E (default 1)")
    p.add_argument("--batch-size", type=int, default=10, help="B (default 10)")
    p.add_argument("--lr", type=float, default=0.05, help="η (default 0.05)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of the stack (default 3)")
    args = p.parse_args(argv)
    try:
        return check(args)
    except FedMPIError as e:
        print(f"fedmpi.check: error: {e}", file=sys.stderr)
        return 2


def check(args) -> int:
    import torch

    from fedmpi.data import Federation
    from fedmpi.engine import Engine, FlatModel
    from fedmpi.engine.inputs import inputs_for
    from fedmpi.fedavg import client_generator
    from fedmpi.models import build_model

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise FedMPIError(f"--device {args.device}: CUDA is not available here")
    device = torch.device(args.device)
    fed = Federation(args.data)
    if not 1 <= args.clients <= fed.num_clients:
        raise FedMPIError(f"--clients {args.clients}: the federation has {fed.num_clients} clients")
    ks = list(range(args.clients))

    def engine_on(device, dtype, stack):
        flat = FlatModel(build_model(args.model, fed.input_shape, fed.num_classes, seed=0), device, dtype)
        data = [tuple(torch.from_numpy(a[:args.examples]).to(device) for a in fed.load_client(k)) for k in ks]
        return Engine(flat, inputs_for(fed, device, dtype), stack, data[0], num_classes=fed.num_classes), data

    def train(engine, data, clients):
        """The clients' weights after the round (rows in client order) and the seconds it took."""
        start, out = time.perf_counter(), [None] * len(clients)
        for stack in engine.stacks([len(y) for _, y in data], args.batch_size):
            rows, _ = engine.train(engine.flat.weights.clone(), [data[i] for i in stack],
                                   [client_generator(0, 1, clients[i]) for i in stack],
                                   args.epochs, args.batch_size, args.lr)
            for row, i in enumerate(stack):
                out[i] = rows[row].double().cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return torch.stack(out), time.perf_counter() - start

    reference, cpu_data = engine_on(torch.device("cpu"), torch.float64, 1)
    expected = train(reference, cpu_data, ks)[0]
    fast, data = engine_on(device, torch.float32, 0)  # stacked as a job's engine stacks on this device
    rows = {}
    for way in ("as a job trains", "eager"):
        if way == "eager":
            if not fast.graphed:
                continue
            fast.graphed = None
        seconds = sorted(train(fast, data, ks)[1] for _ in range(args.repeats))
        rows[way] = (train(fast, data, ks)[0], seconds[len(seconds) // 2])
    memory = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(f"fedmpi.check: {args.model} on {device}, {fast.describe()}; {len(ks)} clients, E {args.epochs}, "
          f"B {args.batch_size}, η {args.lr:g}; reference: each client alone in float64 on the CPU")
    worst = 0.0
    for way, (got, seconds) in rows.items():
        difference = float((got - expected).abs().max())
        worst = max(worst, difference)
        print(f"fedmpi.check: {way}: largest difference {difference:.2e}, {seconds:.3f} s for the "
              f"{len(ks)} clients (median of {args.repeats})")
    where = "peak on the GPU" if device.type == "cuda" else "peak RSS"
    print(f"fedmpi.check: memory: {memory / 2**20:.0f} MiB ({where})")
    if worst > TOLERANCE:
        print(f"fedmpi.check: FAILED: {worst:.2e} exceeds {TOLERANCE:g}", file=sys.stderr)
        return 1
    print(f"fedmpi.check: ok (within {TOLERANCE:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
