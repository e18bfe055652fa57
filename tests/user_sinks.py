"""A sink a user might bring (`sink = "user_sinks:Collect"`, with tests/ on PYTHONPATH)."""
import json


class Collect:
    """Every record, as received, into RUN/collected.jsonl."""

    def __init__(self, run_dir, config):
        self.file = open(run_dir / "collected.jsonl", "w")
        self.rounds = config.rounds

    def write(self, record):
        self.file.write(json.dumps(record) + "\n")

    def close(self):
        self.file.write(json.dumps({"closed": self.rounds}) + "\n")
        self.file.close()


not_a_sink = 42
