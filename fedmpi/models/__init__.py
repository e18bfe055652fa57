"""The model registry: built-in names and a user's own `nn.Module` as "package.module:function".

A model is a function `(input_shape, num_classes) -> nn.Module`: the
shape of one example ((C, H, W) for images, (T,) for token sequences, whose
num_classes is the vocabulary size) and the number of classes. The
built-in names below are the one list that config validation, `--help` and
the docs use; any other model is named by where its function lives, e.g.
`model = "mymodels.resnet:resnet8"` with `mymodels` importable from
PYTHONPATH on every rank. This module imports no torch: the config is
checked before any rank pays for a torch import.
"""
from __future__ import annotations

from fedmpi import usercode
from fedmpi.errors import FedMPIError

# name -> (the builder as "module:function", what it is, the federation kinds it reads (data.Federation.kind),
# checked before torch is imported)
BUILTIN = {
    "2nn": ("fedmpi.models.mnist:two_nn", "the paper's MLP, 2 hidden layers of 200 (199,210 params on MNIST)",
            ("image", "features")),
    "cnn": ("fedmpi.models.mnist:cnn", "the paper's CNN, 2 conv 5x5 + FC 512 (1,663,370 params on MNIST)",
            ("image",)),
    "mlp": ("fedmpi.models.mnist:mlp", "one hidden layer of 200 (e.g. for --dataset synthetic)",
            ("image", "features")),
    "lstm": ("fedmpi.models.shakespeare:lstm", "the paper's character LSTM, 2 layers of 256 (Shakespeare)",
             ("sequence",)),
    "cifar_cnn": ("fedmpi.models.cifar:cnn", "the paper's CIFAR-10 CNN (1,068,298 params on 24x24 crops)",
                  ("image",)),
}
# the paper's parameter counts, printed beside a run's (for the lstm with the paper's vocabulary)
PAPER_PARAMETERS = {"2nn": "199,210", "cnn": "1,663,370", "lstm": "866,578", "cifar_cnn": "about 10^6"}


def help_text() -> str:
    return " | ".join(BUILTIN) + ' | "package.module:function" (your own nn.Module)'


def check_name(name: str) -> str | None:
    """Why `name` cannot name a model (None if it can): a built-in name or "module:function"."""
    if name in BUILTIN or usercode.NAME.match(name):
        return None
    return (f"unknown model '{name}'; choose one of {', '.join(BUILTIN)}, "
            'or name your own as "package.module:function"')


def check_fits(name: str, kind: str) -> str | None:
    """Why the built-in model `name` cannot read a federation of `kind` (None if it can, or is a user's)."""
    if name not in BUILTIN or kind in BUILTIN[name][2]:
        return None
    fitting = [m for m, (_, _, kinds) in BUILTIN.items() if kind in kinds]
    return (f"{name} reads {' or '.join(BUILTIN[name][2])} examples, not this federation's {kind} examples; "
            f"use {' or '.join(fitting) or 'a model of your own'}")


def resolve(name: str):
    """The builder function that `name` stands for; a one-line FedMPIError if it cannot be imported."""
    path = BUILTIN[name][0] if name in BUILTIN else name
    builder = usercode.load(path, "model")
    if not callable(builder):
        module_name, function = path.split(":")
        raise FedMPIError(f"config field 'model': {module_name} has no function {function}")
    return builder


def build_model(name: str, input_shape, num_classes: int, seed: int):
    """Build a model whose initial weights are a function of `seed` alone.

    Contract (used by tests and by resume): w_0 is what the builder draws
    right after `torch.manual_seed(seed)`; conv weights are then stored
    channels_last, and Linear weights input-major (same
    values, other memory order; checkpoint.FORMAT names this layout).
    """
    import torch
    from torch import nn

    builder = resolve(name)
    torch.manual_seed(seed)
    try:
        model = builder(tuple(input_shape), num_classes)
    except (Exception, SystemExit) as e:  # noqa: BLE001 (sys.exit in a user's function is its error too)
        raise FedMPIError(f"config field 'model': {name}{tuple(input_shape), num_classes} failed: "
                          f"{type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise FedMPIError(f"config field 'model': {name} returned a {type(model).__name__}, not a torch nn.Module")
    # Input-major Linear weights (W^T contiguous): x·W^T is then the fast orientation of the
    # training products (engine.linear_sgd) and the one engine.mlp batches, so a client
    # trained alone or stacked rounds alike.
    for m in model.modules():
        if type(m) is nn.Linear:
            m.weight.data = m.weight.data.t().contiguous().t()
    # NHWC convolutions are ~22 % faster on CPU (oneDNN) at the paper's batch sizes.
    return model.to(memory_format=torch.channels_last)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
