"""A user's own code named by where it lives, "package.module:name" (a model's builder, a sink), imported
on the ranks that need it from PYTHONPATH; what cannot be imported is a one-line error naming the field."""
from __future__ import annotations

import importlib
import re

from fedmpi.errors import FedMPIError

NAME = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def load(name: str, field: str):
    """The object `name` ("package.module:attribute") stands for, or None if the module lacks it."""
    module_name, attribute = name.split(":")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as e:  # noqa: BLE001 (a user's module may raise anything on import)
        raise FedMPIError(f"config field '{field}': cannot import {module_name} ({type(e).__name__}: {e}); "
                          "is it on PYTHONPATH on every rank?") from None
    return getattr(module, attribute, None)
