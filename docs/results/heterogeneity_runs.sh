#!/usr/bin/env bash
# The runs of docs/results.md "Heterogeneous and asynchronous clients" (#29 item 5), one after another.
# Usage: docs/results/heterogeneity_runs.sh DATA RUNS [part...]   (parts: synth mnist time; default all)
# from the repository root, with the venv active (its mpiexec: mpich).
# SEED=1 (environment) runs the time part with seed 1 into time_*_seed1 (default seed 0, no suffix).
# DATA holds the federations (made as below), RUNS receives one run folder per run.
#   python -m data_prep --dataset synthetic --model-skew 1 --feature-skew 1 --clients 30 \
#       --size-mu 4 --min-size 50 --max-size 0 --out DATA/synth11-30
#   python -m data_prep --dataset mnist --partition shards --clients 100 --out DATA/mnist-shards-100
set -u
DATA=${1:?DATA folder}; RUNS=${2:?RUNS folder}; shift 2
PARTS=${*:-synth mnist time}
FED="nice -n 19 mpiexec -n 3 python -m fedmpi"
mkdir -p "$RUNS"
# --resume: a new run starts, an interrupted or shorter one continues (bitwise) to its rounds
run() { local name=$1; shift
        echo "== $(date -u +%H:%M:%S) $name: $*"; $FED "$@" --out "$RUNS/$name" --resume \
        > "$RUNS/$name.log" 2>&1; echo "   exit $? $(tail -1 "$RUNS/$name.log")"; }

# FedAvg, FedProx mu = 0 and mu = 1 at 0, 50 and 90 % stragglers: stragglers PREFIX SETTINGS...
stragglers() { local prefix=$1; shift
  for f in 0 0.5 0.9; do
    run ${prefix}_s${f}_fedavg     "$@" --stragglers $f
    [ $f = 0 ] || run ${prefix}_s${f}_fedprox0 "$@" --stragglers $f --algorithm fedprox --prox-mu 0  # = FedAvg at F = 0
    run ${prefix}_s${f}_fedprox1   "$@" --stragglers $f --algorithm fedprox --prox-mu 1
  done; }

for part in $PARTS; do case $part in
synth)  # FedProx paper Figure 1, Synthetic(1,1): 30 clients, 10 a round, E = 20, B = 10, eta = 0.01
  S="--data $DATA/synth11-30 --model mlp --fraction 0.34 --epochs 20 --batch-size 10 --lr 0.01 --rounds 80 --seed 0"
  stragglers synth $S ;;
mnist)  # the same on pathological non-IID MNIST, 2NN, E = 20, B = 50 (scaled from B = 10), eta = 0.05
  M="--data $DATA/mnist-shards-100 --model 2nn --fraction 0.1 --epochs 20 --batch-size 50 --lr 0.05 --rounds 50 --seed 0"
  stragglers mnist $M ;;
time)  # virtual seconds to 95 % on non-IID MNIST, 2NN, E = 1, B = 10, eta = 0.1, lognormal speeds sigma = 1
  SEED=${SEED:-0}; X=$([ "$SEED" = 0 ] || echo "_seed$SEED")
  T="--data $DATA/mnist-shards-100 --model 2nn --epochs 1 --batch-size 10 --lr 0.1 --seed $SEED \
     --client-speed lognormal --speed-sigma 1 --target-accuracy 0.95"
  run time_sync$X          $T --fraction 0.1 --rounds 200
  run time_deadline8$X     $T --fraction 0.1 --rounds 200 --deadline 8
  run time_fedbuff_c20_k10$X $T --execution async --concurrency 20 --buffer-size 10 --rounds 200
  run time_fedbuff_c10_k5$X  $T --execution async --concurrency 10 --buffer-size 5 --rounds 400
  run time_fedbuff_c20_k5$X  $T --execution async --concurrency 20 --buffer-size 5 --rounds 400
  run time_fedasync_c10$X    $T --execution async --concurrency 10 --buffer-size 1 --rounds 1500 --eval-every 5
  ;;
esac; done
echo "== $(date -u +%H:%M:%S) done"
