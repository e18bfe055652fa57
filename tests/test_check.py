"""python -m fedmpi.check: what a user runs on a new GPU node, run here on the CPU."""
import re

import pytest

from helpers import launch


@pytest.mark.parametrize("model", ["cnn", "2nn"])
def test_check_compares_the_device_with_the_float64_reference(model, federation):
    r = launch(0, ["--data", str(federation(clients=10)), "--model", model, "--device", "cpu"],
               module="fedmpi.check", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    differences = [float(d) for d in re.findall(r"largest difference ([0-9.e+-]+)", r.stdout)]
    assert differences and all(0 < d < 1e-4 for d in differences), r.stdout  # float32 vs float64: not 0
    assert re.search(r"memory: \d+ MiB", r.stdout), r.stdout


def test_check_on_a_missing_gpu_is_one_line(federation):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = launch(0, ["--data", str(federation(clients=10)), "--device", "cuda"], module="fedmpi.check", timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == "fedmpi.check: error: --device cuda: CUDA is not available here"
