"""Round records go to TensorBoard (`--tensorboard`) and to a user's sink (`--sink module:Class`) as to
metrics.jsonl: read back with TensorBoard's own reader, and compared with metrics.jsonl."""
import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedmpi.metrics import read_metrics
from helpers import launch, train

USER_CODE = {"PYTHONPATH": str(Path(__file__).parent)}
FLAGS = ["--rounds", "3", "--threads", "1", "--batch-size", "50"]


def test_tensorboard_and_a_user_sink_get_every_round(federation, tmp_path):
    run = tmp_path / "run"
    train(3, federation(clients=10), run, *FLAGS, "--tensorboard", "true", "--sink", "user_sinks:Collect",
          env=USER_CODE)
    records = read_metrics(run)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for tag in ("test_accuracy", "train_loss", "time/bcast"):  # nested values under their path
        got = {e.step: e.value for e in events.Scalars(tag)}
        expected = {}
        for r in records:
            value = r
            for key in tag.split("/"):
                value = value.get(key, {})
            if value != {}:
                expected[r["round"]] = value
        assert got.keys() == expected.keys() and len(got) >= 3, tag
        assert all(got[t] == pytest.approx(expected[t], rel=1e-6) for t in got), tag  # stored as float32
    collected = [json.loads(line) for line in (run / "collected.jsonl").read_text().splitlines()]
    assert collected == [*records, {"closed": 3}]


@pytest.mark.parametrize("sink, expected", [
    ("user_sinks:not_a_sink", "no class with write(record) and close()"),
    ("no_such_module:Sink", "cannot import no_such_module"),
    ("not a name", 'name your sink as "package.module:Class"'),
])
def test_a_bad_sink_is_one_line_before_anything_is_written(sink, expected, federation, tmp_path):
    r = launch(3, ["--data", str(federation(clients=10)), "--out", str(tmp_path / "run"), "--sink", sink],
               env=USER_CODE, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "'sink'" in lines[0] and expected in lines[0], r.stderr
    assert not (tmp_path / "run").exists()
