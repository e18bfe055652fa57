"""Federated algorithms: the interface (base.py), one module per built-in, and the registry that the CLI
help, config validation, sweeps and result tables read.

A built-in is its module plus one line in BUILTIN; a user's algorithm is named
by its import path, `--algorithm package.module:Class` (docs/extending.md).
DP-FedAvg (privacy.py) wraps any algorithm whose clients contribute FedAvg's
way, and the server optimizer (optimizers.py) applies any algorithm's
averaged update: FedAdam is `--server-optimizer adam`, with any algorithm.
Nothing here imports torch: the config is checked before torch is imported.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing

from fedmpi import usercode
from fedmpi.errors import FedMPIError

# name -> (the class as "module:Class", what it is)
BUILTIN = {
    "fedavg": ("fedmpi.algorithms.fedavg:FedAvg", "McMahan et al. 2017"),
    "fedprox": ("fedmpi.algorithms.fedprox:FedProx", "Li et al. 2020, with prox_mu"),
    "scaffold": ("fedmpi.algorithms.scaffold:Scaffold", "Karimireddy et al. 2020, option II"),
}


def help_text() -> str:
    return " | ".join(BUILTIN) + ' | "package.module:Class" (your own, docs/extending.md)'


def check_name(name: str) -> str | None:
    """Why `name` cannot name an algorithm (None if it can)."""
    if name in BUILTIN or usercode.NAME.match(name):
        return None
    close = difflib.get_close_matches(name, BUILTIN, n=1)
    return (f"unknown algorithm '{name}'; choose one of {', '.join(BUILTIN)}, or name your own as "
            '"package.module:Class"' + (f" (did you mean '{close[0]}'?)" if close else ""))


def resolve(name: str) -> type:
    """The Algorithm subclass `name` stands for; a one-line FedMPIError if it cannot be imported."""
    from fedmpi.algorithms.base import Algorithm

    path = BUILTIN[name][0] if name in BUILTIN else name
    cls = usercode.load(path, "algorithm")
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        module_name, attribute = path.split(":")
        raise FedMPIError(f"config field 'algorithm': {module_name}.{attribute} is "
                          f"{'missing' if cls is None else 'not a subclass of fedmpi.algorithms.base.Algorithm'}")
    return cls


def title(name: str) -> str:
    """The algorithm's name in tables and titles, without importing a user's module (FedProx; MyAlgo)."""
    return resolve(name).title if name in BUILTIN else name.split(":")[1]


def parse_args(cls: type, values: dict, name: str):
    """The algorithm's settings (`algorithm_args`) as its `Args` dataclass; one line naming a bad key."""
    from fedmpi.config import _coerce

    def bad(why):
        raise FedMPIError(f"config field 'algorithm_args': {why} ({name})")

    if cls.Args is None:
        if values:
            bad(f"{cls.title} takes no settings, got {', '.join(map(repr, values))}")
        return None
    kinds = typing.get_type_hints(cls.Args)
    known = [f.name for f in dataclasses.fields(cls.Args)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            bad(f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                + f"; {cls.title} takes {', '.join(known) or 'none'}")
    simple = (bool, int, float, str)
    try:
        return cls.Args(**{k: _coerce(f"algorithm_args.{k}", v, kinds[k]) if kinds.get(k) in simple else v
                           for k, v in values.items()})
    except (TypeError, ValueError) as e:  # the Args' own checks (__post_init__) should name the key
        bad(str(e))


def check(cfg) -> None:
    """Refuse, in one line, an algorithm that cannot be imported, settings it does not take, DP with
    an algorithm DP-FedAvg cannot wrap (algorithms/privacy.py), or asynchronous execution with one that
    cannot run so."""
    cls = resolve(cfg.algorithm)
    parse_args(cls, cfg.algorithm_args, cfg.algorithm)
    if cfg.dp_clip and not cls.dp_compatible:
        raise FedMPIError(f"config field 'dp_clip': {cls.title} cannot run with DP (dp_clip > 0): DP-FedAvg wraps "
                          "algorithms whose clients contribute FedAvg's way and whose state does not depend on "
                          "single clients' updates (dp_compatible, docs/extending.md)")
    if cfg.execution == "async" and not cls.asynchronous:
        raise FedMPIError(f"config field 'execution': {cls.title} cannot run asynchronously (execution = async): "
                          "FedBuff buffers updates of clients that started from different models, which only "
                          "algorithms without per-round state take (asynchronous, docs/extending.md)")


def build(cfg, num_clients: int, clients_per_round: int, dim: int, num_params: int, dim_order, on_server: bool):
    """The run's algorithm on this rank, wrapped in DP-FedAvg when dp_clip > 0."""
    from fedmpi.algorithms.base import RunInfo
    from fedmpi.algorithms.privacy import Private

    cls = resolve(cfg.algorithm)
    algorithm = cls(RunInfo(cfg, num_clients, clients_per_round, dim, num_params, on_server),
                    parse_args(cls, cfg.algorithm_args, cfg.algorithm))
    return Private(algorithm, dim_order) if cfg.dp_clip > 0 else algorithm
