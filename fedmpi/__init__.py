"""fedmpi: Federated Averaging (McMahan et al., 2017) as an MPI batch job."""

__version__ = "0.1.0"


def run(config=None, *, resume: bool = False, overwrite: bool = False, **overrides) -> dict:
    """Run one job from Python and return its summary (summary.json's contents) on every rank.

    `config`: a TOML file's path, a dict of config fields, or a RunConfig (or None: the defaults);
    `overrides` replace its fields, as flags do on the command line. Under `mpiexec -n N python
    script.py` every rank calls it; in one process (a notebook) that process is the server and the
    only worker. It may be called again in the same process, e.g. to extend a run with
    `rounds=..., resume=True`. A mistake in the config raises FedMPIError before anything starts;
    a job that does not finish (a stop signal, an error printed on one line) raises RuntimeError
    with its exit status; a diverged run returns its summary, which says so.
    """
    import dataclasses
    import json
    from pathlib import Path

    from mpi4py import MPI

    from fedmpi.cli import main
    from fedmpi.config import RunConfig, build_config, inline_table
    from fedmpi.errors import DIVERGED

    if isinstance(config, RunConfig):
        config = dataclasses.asdict(config)
    path = str(config) if isinstance(config, (str, Path)) else None
    fields = {**(config if isinstance(config, dict) else {}), **overrides}
    cfg = build_config(path, fields)  # the one-line errors, as an exception, before any collective
    argv = (["--config", path] if path else []) + ["--resume"] * resume + ["--overwrite"] * overwrite
    for name, value in fields.items():
        argv += [f"--{name.replace('_', '-')}", inline_table(value) if isinstance(value, dict) else str(value)]
    status = main(argv)
    if status not in (0, DIVERGED):
        raise RuntimeError(f"fedmpi: the job in {cfg.out} ended with exit status {status} (see its output)")
    world = MPI.COMM_WORLD
    summary = json.loads((Path(cfg.out) / "summary.json").read_text()) if world.rank == 0 else None
    return world.bcast(summary, root=0)
