"""Run configuration: one dataclass, filled from a TOML file and CLI flags.

Precedence: defaults < TOML file (`--config`) < command-line flags. Every
check names the field it rejects, so a typo in a 500-job sweep is caught
before any rank touches data.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

import tomli_w

from fedmpi import algorithms, models, usercode
from fedmpi.errors import FedMPIError

BAD_UPDATE_POLICIES = ("abort", "skip")
PRECISIONS = ("float32", "float64")
SPEED_MODELS = ("constant", "lognormal")
EXECUTIONS = ("sync", "async")
STALENESS = ("sqrt", "none")  # client_speed's built-ins, besides a CSV file (fedmpi/system.py)
MAX_SEED = 2**63 - 1  # numpy's SeedSequence refuses negative seeds; TOML integers are 64-bit signed
MAX_THREADS = 4096
MAX_LR = 1e6  # beyond any learning rate that trains; far below float32's overflow at 3.4e38
# The clients' weight decay λ: usual values are 1e-5 to 1e-3. Each step scales a weight by (1 − ηλ) besides
# the gradient, so with λ > 1e3 and any η ≥ 1e-3 the decay alone flips every weight's sign each step.
MAX_WEIGHT_DECAY = 1e3
MAX_DP = 1e6  # the largest dp_clip and dp_noise_multiplier (see _validate_algorithm)
MIN_DP_NOISE = 1e-3  # the smallest dp_noise_multiplier but 0 (see _validate_algorithm)
# Set-up (imports, model, shards; docs/reliability.md) takes seconds to a few minutes even at K = 10^6
# on a parallel file system; ten minutes is far beyond that, yet well within a batch job's time.
DEFAULT_SETUP_TIMEOUT_S = 600.0


def _field(default, help: str, *, semantic: bool = True, label: str | None = None, table: str | None = None):
    """A RunConfig field and everything fedmpi says of it, in one place.

    help: its --help text (the default is added); semantic: whether it changes the result (if not,
    a resumed run may change it, and sweeps leave it out of run names where they can); label: its
    short name in a sweep's run names ("" = the value alone; None: "name=value"); table: "setting"
    for a column that groups result tables, or the symbol a tuned value is shown as there (η, μ)."""
    metadata = {"help": help, "semantic": semantic, "label": label, "table": table}
    if isinstance(default, dict):  # a TOML table (each run gets its own)
        return dataclasses.field(default_factory=dict, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass
class RunConfig:
    """Everything that defines a run. Names follow the paper (C, E, B, η, T)."""

    data: str = _field("", "federation folder written by python -m data_prep", semantic=False, table="setting")
    model: str = _field("2nn", models.help_text(), label="", table="setting")
    fraction: float = _field(0.1, "C, share of clients per round (0 = one client)", label="C", table="setting")
    epochs: int = _field(1, "E, local epochs", label="E", table="setting")
    batch_size: int = _field(10, "B, local minibatch size; 0 or inf = the whole local set (FedSGD: E=1, B=inf)",
                             label="B", table="setting")
    lr: float = _field(0.1, "η, client learning rate", label="lr", table="η")
    lr_decay: float = _field(1.0, "the clients' η is multiplied by this every round: η_t = η · lr_decay^(t−1) "
                             "(1 = constant)", label="decay")
    client_momentum: float = _field(0.0, "the clients' SGD momentum ρ, in [0, 1), as torch.optim.SGD's: "
                                    "v ← ρ v + g, w ← w − η v; v starts at 0 for every client in every round "
                                    "(not kept across rounds)", label="mom")
    weight_decay: float = _field(0.0, f"the clients' L2 weight decay λ, in [0, {MAX_WEIGHT_DECAY:g}], as "
                                 "torch.optim.SGD's: g = ∇f(w) + λ w on every parameter (biases too; not on "
                                 "buffers)", label="wd")
    rounds: int = _field(50, "T, communication rounds", semantic=False)
    seed: int = _field(0, "seed of model init, client sampling and shuffling", label="seed")
    out: str = _field("runs/fedavg", "run folder for config.toml, metrics.jsonl, summary.json, model.pt",
                      semantic=False)
    eval_every: int = _field(1, "evaluate the global model every N rounds (always the last)", semantic=False)
    eval_clients: float = _field(0.0, "federated evaluation: the share of clients whose own test sets (held out by "
                                 "data_prep's client test fraction) the global model is also evaluated on, every "
                                 "evaluated round; one set for the run, drawn from the seed; client_accuracy in "
                                 "metrics.jsonl, per client in client_accuracy.jsonl (0 = off)", semantic=False)
    checkpoint_every: int = _field(10, "write a checkpoint every N rounds (always the last); 0 = only the last",
                                   semantic=False)
    on_bad_update: str = _field("abort", "abort (end the run as diverged, exit 3) | skip (leave the client out): "
                                "a NaN/Inf update")
    device: str = _field("auto", "auto | cpu | cuda | cuda:N (auto: GPU local_rank mod #GPUs, else CPU)",
                         semantic=False)
    threads: int = _field(0, "torch threads per rank (0 = OMP_NUM_THREADS, else the rank's CPU binding, else node "
                          "cores / worker ranks)", semantic=False)
    target_accuracy: float = _field(0.0, "stop once the test accuracy reaches this (e.g. 0.99); 0 = run all rounds",
                                    semantic=False)
    workers_per_node: int = _field(0, "ranks per node that host clients (0 = the node's cores; further ranks wait "
                                   "idle)", semantic=False)
    precision: str = _field("float32", "float32 | float64: dtype of the weights and the training (float64 to check "
                            "numerics)")
    # semantic: stacked through vmap, a CNN's step rounds otherwise on a CPU than one client at a time
    stack_clients: int = _field(0, "most clients a worker trains together (0 = auto, 1 = one at a time; see "
                                "docs/architecture.md)")
    algorithm: str = _field("fedavg", algorithms.help_text(), label="", table="setting")
    algorithm_args: dict = _field({}, "the algorithm's own settings, a TOML table ([algorithm_args] in the "
                                  "config file; on the command line 'alpha = 0.1, beta = 2')", label="",
                                  table="setting")
    prox_mu: float = _field(0.0, "FedProx's μ (algorithm fedprox)", label="mu", table="μ")
    server_optimizer: str = _field("sgd", "sgd | momentum | adam | yogi | adagrad: how the server applies the "
                                   "averaged update", label="", table="setting")
    server_lr: float = _field(1.0, "the server's learning rate (sgd with 1: FedAvg)", label="slr", table="server η")
    server_momentum: float = _field(0.9, "server momentum (server_optimizer momentum: FedAvgM)", label="beta")
    server_beta1: float = _field(0.9, "adam, yogi, adagrad: first-moment decay β1")
    server_beta2: float = _field(0.99, "adam, yogi: second-moment decay β2")
    server_tau: float = _field(1e-3, "adam, yogi, adagrad: adaptivity τ, in (0, 1]")
    dp_clip: float = _field(0.0, "DP-FedAvg: clip each client's update to this L2 norm (0 = no DP)", label="S")
    dp_noise_multiplier: float = _field(0.0, "DP-FedAvg: Gaussian noise of std z × dp_clip on the sum of updates",
                                        label="z", table="setting")
    dp_delta: float = _field(1e-5, "DP-FedAvg: δ of the (ε, δ) written every round")
    client_speed: str = _field("constant", "the clients' compute speeds (the virtual clock, fedmpi/system.py): "
                               "constant (all 1) | lognormal (exp(σ z), σ = speed_sigma) | a CSV file with the "
                               "columns client, speed and optionally bandwidth, latency")
    speed_sigma: float = _field(1.0, "σ of lognormal speeds", label="sigma")
    step_seconds: float = _field(0.05, "virtual seconds of one local step at speed 1")
    bandwidth: float = _field(1.0, "every client's upload bandwidth in MB/s (unless the speeds' CSV gives its own)")
    latency: float = _field(0.05, "every client's network latency in seconds (unless the speeds' CSV gives its own)")
    stragglers: float = _field(0.0, "the share of each round's clients that do only 1 to E−1 local epochs (drawn "
                               "anew each round; FedProx uses their partial work, FedAvg drops them)", label="strag")
    deadline: float = _field(0.0, "virtual seconds a round waits: a client does only the steps that fit (FedProx "
                             "uses them, FedAvg drops the client); 0 = no deadline", label="deadline")
    availability: float = _field(1.0, "the probability that a client is online when a round starts (async: when it "
                                 "would start), drawn anew each time; rounds sample among those online")
    availability_trace: str = _field("", "a CSV file of online intervals (client,start,end in virtual seconds; "
                                     "clients without a row are always online; async: a client starts only while "
                                     "online)")
    execution: str = _field("sync", "sync (rounds of C·K clients) | async (FedBuff: concurrency clients train at "
                            "once, every buffer_size finished updates make one server update, a round; "
                            "fedmpi/schedule.py)", label="", table="setting")
    concurrency: int = _field(10, "async: clients training at any moment", label="conc", table="setting")
    buffer_size: int = _field(10, "async: client updates per server update (1 = FedAsync)", label="buf",
                              table="setting")
    staleness: str = _field("sqrt", "async: an update τ server updates stale is weighted 1/√(1 + τ) (sqrt, "
                            "FedBuff's) or 1 (none)")
    tensorboard: bool = _field(False, "also write every round's numbers as TensorBoard event files under "
                               "RUN/tensorboard/ (the tensorboard extra)", semantic=False)
    sink: str = _field("", 'your own sink for round records, "package.module:Class" (docs: fedmpi/sinks.py)',
                       semantic=False)
    setup_timeout: float = _field(DEFAULT_SETUP_TIMEOUT_S, "seconds set-up may take (imports, model, shards) before "
                                  "the job ends with one line naming the ranks that had not finished; 0 = no limit",
                                  semantic=False)

    def client_lr(self, round_: int) -> float:
        """η_t = η · lr_decay^(t−1), the clients' learning rate in round t (1, 2, ...)."""
        return self.lr * self.lr_decay ** (round_ - 1)

    def clients_per_round(self, num_clients: int) -> int:
        """m = max(round(C·K), 1), the paper's number of clients per round; async: the buffer's size."""
        if self.execution == "async":
            return self.buffer_size
        return max(int(round(self.fraction * num_clients)), 1)

    def clients_to_evaluate(self, num_clients: int) -> int:
        """max(round(C_eval·K), 1) clients of federated evaluation, or 0 when it is off."""
        return max(int(round(self.eval_clients * num_clients)), 1) if self.eval_clients else 0

    def to_toml(self) -> str:
        return tomli_w.dumps(dataclasses.asdict(self))


FIELD_NAMES = [f.name for f in fields(RunConfig)]
FIELD_HELP = {f.name: f.metadata["help"] for f in fields(RunConfig)}
# Fields that do not change the computed result; a resumed run may differ in them
# (the federation itself is pinned by its manifest sha256, not by its path).
NON_SEMANTIC = {f.name for f in fields(RunConfig) if not f.metadata["semantic"]}
LABELS = {f.name: f.metadata["label"] for f in fields(RunConfig) if f.metadata["label"] is not None}
SETTING = tuple(f.name for f in fields(RunConfig) if f.metadata["table"] == "setting")
TUNED = {f.name: f.metadata["table"] for f in fields(RunConfig) if f.metadata["table"] not in (None, "setting")}


# Fields that are one algorithm's own setting: a sweep's [base] gives them to that algorithm's runs only.
ALGORITHM_FIELDS = {"prox_mu": "fedprox"}


def _parse_batch_size(value):
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity", "∞", "full"):
        return 0
    if isinstance(value, float) and value == math.inf:  # TOML's `batch_size = inf`
        return 0
    return value


def _coerce(name: str, value, kind: type):
    if name == "batch_size":
        value = _parse_batch_size(value)
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is dict:
            return _table(name, value)
        return str(value)
    except (TypeError, ValueError):
        raise FedMPIError(f"config field '{name}': expected {kind.__name__}, got {value!r}") from None


def _table(name: str, value) -> dict:
    """A TOML table, or the text of an inline table's contents ('alpha = 0.1, beta = 2', from the CLI)."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise ValueError
    try:
        return tomllib.loads(f"{name} = {{{value}}}")[name]
    except tomllib.TOMLDecodeError as e:
        raise FedMPIError(f"config field '{name}': expected TOML such as 'alpha = 0.1, beta = 2', got {value!r} "
                          f"({str(e).split(' (at line')[0]})") from None


def inline_table(table: dict) -> str:
    """The text _table reads back as `table` (fedmpi.run passes a dict field on as a flag)."""
    def value(v):
        return "{" + inline_table(v) + "}" if isinstance(v, dict) else tomli_w.dumps({"v": v})[4:].strip()
    return ", ".join(f"{tomli_w.dumps({k: 0})[:-5]} = {value(v)}" for k, v in table.items())


def build_config(toml_path: str | None, overrides: dict) -> RunConfig:
    """Defaults, then the TOML file, then the non-None CLI overrides; then validate."""
    values: dict = {}
    if toml_path:
        values.update(read_toml(toml_path))
    values.update({k: v for k, v in overrides.items() if v is not None})
    kinds = {f.name: type(getattr(RunConfig(), f.name)) for f in fields(RunConfig)}
    cfg = RunConfig(**{k: _coerce(k, v, kinds[k]) for k, v in values.items()})
    validate(cfg)
    return cfg


def read_toml(path: str, what: str = "config file", check_keys: bool = True) -> dict:
    """The TOML file's table; with check_keys, every key must be a RunConfig field."""
    p = Path(path)
    if not p.exists():
        raise FedMPIError(f"{what} {path}: not found")
    if not p.is_file():
        raise FedMPIError(f"{what} {path}: not a file")
    try:
        values = tomllib.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise FedMPIError(f"{what} {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise FedMPIError(f"{what} {path}: TOML syntax error: {e}") from None
    except OSError as e:
        raise FedMPIError(f"{what} {path}: cannot read: {e.strerror}") from None
    for key in values if check_keys else ():
        if key not in FIELD_NAMES:
            close = difflib.get_close_matches(key, FIELD_NAMES, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise FedMPIError(f"{what} {path}: unknown key '{key}'{hint}")
    return values


def validate(cfg: RunConfig) -> None:
    def bad(field, why):
        raise FedMPIError(f"config field '{field}': {why}")

    if not cfg.data:
        bad("data", "no federation folder given (--data DIR, made by python -m data_prep)")
    why = models.check_name(cfg.model)
    if why:
        close = difflib.get_close_matches(cfg.model, models.BUILTIN, n=1)
        bad("model", why + (f" (did you mean '{close[0]}'?)" if close else ""))
    if not (math.isfinite(cfg.fraction) and 0.0 <= cfg.fraction <= 1.0):
        bad("fraction", f"C must lie in [0, 1] (0 = one client per round), got {cfg.fraction}")
    if cfg.epochs < 1:
        bad("epochs", f"E must be at least 1, got {cfg.epochs}")
    if cfg.batch_size < 0:
        bad("batch_size", f"B must be a positive size, or 0 / 'inf' for the whole local set, got {cfg.batch_size}")
    if not (math.isfinite(cfg.lr) and 0 < cfg.lr <= MAX_LR):
        bad("lr", f"the learning rate must be a finite number > 0 and at most {MAX_LR:g}, got {cfg.lr}")
    if not (math.isfinite(cfg.lr_decay) and 0 < cfg.lr_decay <= 1):
        bad("lr_decay", f"must lie in (0, 1] (1 = a constant η), got {cfg.lr_decay}")
    if not (math.isfinite(cfg.client_momentum) and 0 <= cfg.client_momentum < 1):
        bad("client_momentum", f"must lie in [0, 1) (0 = plain SGD), got {cfg.client_momentum}")
    if not (math.isfinite(cfg.weight_decay) and 0 <= cfg.weight_decay <= MAX_WEIGHT_DECAY):
        bad("weight_decay", f"must be a finite number in [0, {MAX_WEIGHT_DECAY:g}] (0 = none), got {cfg.weight_decay}")
    _validate_system(cfg, bad)
    if not 0 <= cfg.seed <= MAX_SEED:
        bad("seed", f"must lie in 0..{MAX_SEED} (2^63 - 1), got {cfg.seed}")
    if cfg.rounds < 0:
        bad("rounds", f"must be >= 0, got {cfg.rounds}")
    if cfg.eval_every < 1:
        bad("eval_every", f"must be >= 1, got {cfg.eval_every}")
    if not (math.isfinite(cfg.eval_clients) and 0.0 <= cfg.eval_clients <= 1.0):
        bad("eval_clients", f"must lie in [0, 1] (the share of clients evaluated on their own test sets; 0 = off), "
            f"got {cfg.eval_clients}")
    if cfg.checkpoint_every < 0:
        bad("checkpoint_every", f"must be >= 0, got {cfg.checkpoint_every}")
    if cfg.on_bad_update not in BAD_UPDATE_POLICIES:
        bad("on_bad_update", f"choose one of {', '.join(BAD_UPDATE_POLICIES)}, got '{cfg.on_bad_update}'")
    if not (math.isfinite(cfg.target_accuracy) and 0.0 <= cfg.target_accuracy <= 1.0):
        bad("target_accuracy", f"must lie in [0, 1] (0 = run all rounds), got {cfg.target_accuracy}")
    if cfg.workers_per_node < 0:
        bad("workers_per_node", f"must be >= 0 (0 = as many as the node has cores), got {cfg.workers_per_node}")
    if cfg.sink and not usercode.NAME.match(cfg.sink):
        bad("sink", f'name your sink as "package.module:Class", got {cfg.sink!r}')
    if not (math.isfinite(cfg.setup_timeout) and cfg.setup_timeout >= 0):
        bad("setup_timeout", f"must be a number of seconds >= 0 (0 = no limit), got {cfg.setup_timeout}")
    if not 0 <= cfg.threads <= MAX_THREADS:
        bad("threads", f"must lie in 0..{MAX_THREADS} (0 = automatic), got {cfg.threads}")
    for field in ("data", "out"):
        try:
            getattr(cfg, field).encode("utf-8")
        except UnicodeEncodeError:
            bad(field, f"the path {getattr(cfg, field)!r} is not valid UTF-8; choose a name in UTF-8")
        if "\0" in getattr(cfg, field):  # no file system takes it (TOML can write it: "\u0000")
            bad(field, f"the path {getattr(cfg, field)!r} contains a NUL byte; remove it")
    _validate_algorithm(cfg, bad)
    if cfg.precision not in PRECISIONS:
        bad("precision", f"choose one of {', '.join(PRECISIONS)}, got '{cfg.precision}'")
    if cfg.stack_clients < 0:
        bad("stack_clients", f"must be >= 0 (0 = automatic, 1 = one client at a time), got {cfg.stack_clients}")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        bad("device", f"choose auto, cpu, cuda or cuda:N, got '{cfg.device}'")


def _validate_system(cfg: RunConfig, bad) -> None:
    """The simulated clients' systems (fedmpi.system); a CSV of speeds is read, and checked, in set-up."""
    if cfg.client_speed not in SPEED_MODELS and not cfg.client_speed.endswith(".csv"):
        bad("client_speed", f"choose {', '.join(SPEED_MODELS)} or a .csv file of per-client speeds, "
            f"got {cfg.client_speed!r}")
    for name, low in (("speed_sigma", 0.0), ("step_seconds", None), ("bandwidth", None), ("latency", 0.0),
                      ("deadline", 0.0)):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and (value >= low if low is not None else value > 0)):
            bad(name, f"must be a finite number {'>= 0' if low is not None else '> 0'}, got {value}")
    if not (math.isfinite(cfg.stragglers) and 0 <= cfg.stragglers < 1):
        bad("stragglers", f"must lie in [0, 1) (the share of each round's clients that are slow), got {cfg.stragglers}")
    if cfg.stragglers and cfg.epochs < 2:
        bad("stragglers", f"a straggler does 1 to E−1 local epochs, so it needs epochs >= 2, got E = {cfg.epochs}")
    if not (math.isfinite(cfg.availability) and 0 < cfg.availability <= 1):
        bad("availability", f"must lie in (0, 1] (1 = always online), got {cfg.availability}")
    if cfg.dp_clip and cfg.execution != "async" and (cfg.availability < 1 or cfg.availability_trace):
        bad("dp_clip", "DP's ε assumes m clients sampled uniformly from all K; it cannot be stated with "
            "availability < 1 or an availability trace (asynchronous execution claims no sampling, so it can)")
    if cfg.execution not in EXECUTIONS:
        bad("execution", f"choose one of {', '.join(EXECUTIONS)}, got {cfg.execution!r}")
    if cfg.staleness not in STALENESS:
        bad("staleness", f"choose one of {', '.join(STALENESS)}, got {cfg.staleness!r}")
    if cfg.execution == "async":
        if cfg.concurrency < 1:
            bad("concurrency", f"must be >= 1 (clients training at once), got {cfg.concurrency}")
        if not 1 <= cfg.buffer_size <= cfg.concurrency:
            bad("buffer_size", f"must lie in 1..concurrency ({cfg.concurrency}): a buffer fills with updates of "
                f"clients that trained at once, got {cfg.buffer_size}")
        for name in ("stragglers", "deadline"):
            if getattr(cfg, name):
                bad(name, "is for synchronous rounds; asynchronous execution (execution = async) does not take it")


SERVER_STEPS = {"fedadam": "--server-optimizer adam", "fedyogi": "--server-optimizer yogi",
                "fedadagrad": "--server-optimizer adagrad", "fedavgm": "--server-optimizer momentum",
                "dp-fedavg": "--dp-clip S --dp-noise-multiplier z", "dpfedavg": "--dp-clip S --dp-noise-multiplier z"}


def _validate_algorithm(cfg: RunConfig, bad) -> None:
    from fedmpi.algorithms.optimizers import NAMES as OPTIMIZERS

    # Names from the papers that are a server optimizer or DP on top of an algorithm here
    if cfg.algorithm.lower() in SERVER_STEPS:
        bad("algorithm", f"'{cfg.algorithm}' is FedAvg with {SERVER_STEPS[cfg.algorithm.lower()]}")
    why = algorithms.check_name(cfg.algorithm)
    if why:
        bad("algorithm", why)
    if cfg.server_optimizer not in OPTIMIZERS:
        close = difflib.get_close_matches(cfg.server_optimizer, OPTIMIZERS, n=1)
        bad("server_optimizer", f"unknown server optimizer '{cfg.server_optimizer}'; choose one of "
            f"{', '.join(OPTIMIZERS)}" + (f" (did you mean '{close[0]}'?)" if close else ""))
    numbers = {f: getattr(cfg, f) for f in ("prox_mu", "server_lr", "server_momentum", "server_beta1",
                                             "server_beta2", "server_tau", "dp_clip", "dp_noise_multiplier",
                                             "dp_delta")}
    for field, value in numbers.items():
        if not math.isfinite(value):
            bad(field, f"must be a finite number, got {value}")
    if cfg.prox_mu < 0:
        bad("prox_mu", f"must be >= 0, got {cfg.prox_mu}")
    if cfg.prox_mu and cfg.algorithm != "fedprox":
        bad("prox_mu", f'is FedProx\'s μ: set algorithm = "fedprox" to use it (algorithm is "{cfg.algorithm}")')
    if not 0 < cfg.server_lr <= MAX_LR:
        bad("server_lr", f"must be > 0 and at most {MAX_LR:g}, got {cfg.server_lr}")
    for field in ("server_momentum", "server_beta1", "server_beta2"):
        if not 0 <= numbers[field] < 1:
            bad(field, f"must lie in [0, 1), got {numbers[field]}")
    if not 0 < cfg.server_tau <= 1:  # τ keeps √v + τ off 0; a large τ dwarfs √v and the step with it (1e200: none)
        bad("server_tau", f"must lie in (0, 1], got {cfg.server_tau}")
    # Past 1e6 a clip clips nothing and a noise multiplier drowns every update; within them the noise
    # (std z·S ≤ 1e12) stays finite and the accountant's arithmetic in range (it raised from z = 1e9 and
    # overflowed from 1e155). Below z = 1e-3 one round at full participation costs ε > 10^6 (δ = 1e-5),
    # no privacy worth accounting, and the accountant divides by zero below 1e-150 (algorithms/privacy.py).
    if not 0 <= cfg.dp_clip <= MAX_DP:
        bad("dp_clip", f"must lie in [0, {MAX_DP:g}] (0 = no differential privacy), got {cfg.dp_clip}")
    if not (cfg.dp_noise_multiplier == 0 or MIN_DP_NOISE <= cfg.dp_noise_multiplier <= MAX_DP):
        bad("dp_noise_multiplier", f"must be 0 (clipping only) or lie in [{MIN_DP_NOISE:g}, {MAX_DP:g}], "
            f"got {cfg.dp_noise_multiplier}")
    if cfg.dp_noise_multiplier and not cfg.dp_clip:
        bad("dp_clip", "DP noise needs a clip: set dp_clip > 0 (the L2 norm each client's update is clipped to)")
    if not 0 < cfg.dp_delta < 1:
        bad("dp_delta", f"must lie in (0, 1), got {cfg.dp_delta}")
    algorithms.check(cfg)  # imports a user's algorithm: its settings are checked before anything is written
