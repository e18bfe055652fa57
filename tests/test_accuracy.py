"""The 2NN learns MNIST like the paper's FedAvg (C=0.1, E=1, B=10, η=0.1, IID, K=100).

Reference implementations reach 95.6–95.8 % after 30 rounds; the paper's
Table 1 reports 97 % after about 87 rounds for this setting. The run stops at
the first round at or above 97 % (`--target-accuracy`), within the 100 it may take.
"""
from helpers import train
from fedmpi.metrics import read_metrics


def test_2nn_iid_reaches_95_percent_in_30_rounds_and_97_in_100(federation, tmp_path):
    r = train(3, federation(), tmp_path / "run", "--model", "2nn", "--fraction", "0.1", "--epochs", "1",
              "--batch-size", "10", "--lr", "0.1", "--rounds", "100", "--target-accuracy", "0.97", "--seed", "0",
              timeout=400)
    acc = {m["round"]: m["test_accuracy"] for m in read_metrics(tmp_path / "run") if "test_accuracy" in m}
    last = max(acc)
    assert sorted(acc) == list(range(last + 1))  # evaluated every round up to the stop
    assert max(acc[t] for t in range(min(last, 30) + 1)) >= 0.95, f"best in 30 rounds: {acc}"
    first_97 = min((t for t, a in acc.items() if a >= 0.97), default=None)
    print(f"2NN IID: round 30 accuracy {acc.get(30)}; first >= 97 % at round {first_97}")
    assert first_97 == last <= 100, f"no round of 100 reached 97 %: best {max(acc.values()):.4f}"
    assert f"round {last} reached the target accuracy 97%" in r.stdout
