#!/usr/bin/env bash
# The runs of docs/results.md "Heterogeneous and asynchronous clients" (#29 item 5), one after another.
# Usage: docs/results/heterogeneity_runs.sh DATA RUNS [part...]   (parts: synth mnist time shakespeare; default all)
# from the repository root, with the venv active (its mpiexec: mpich).
# SEED=1 (environment) runs the time part with seed 1 into time_*_seed1 (default seed 0, no suffix).
# DATA holds the federations (made as below), RUNS receives one run folder per run.
#   python -m data_prep --dataset synthetic --model-skew 1 --feature-skew 1 --clients 30 \
#       --size-mu 4 --min-size 50 --max-size 0 --out DATA/synth11-30
#   python -m data_prep --dataset mnist --partition shards --clients 100 --out DATA/mnist-shards-100
#   python -m data_prep --dataset shakespeare --partition natural --out DATA/shakespeare-natural
set -u
DATA=${1:?DATA folder}; RUNS=${2:?RUNS folder}; shift 2
PARTS=${*:-synth mnist time shakespeare}
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
shakespeare)  # virtual seconds to 40 % on Shakespeare by role (1,244 clients), LSTM, E = 1, B = 10, eta = 1.47,
  # lognormal speeds sigma = 1, a local step 0.2 virtual s at speed 1. Evaluating the test set costs ~17 s
  # of the 2 cores, so sync is evaluated every 4th round (~60 virtual s), FedBuff every 8th or 16th server
  # update (~20 s), FedAsync every 50th (~30 s)
  S="--data $DATA/shakespeare-natural --model lstm --epochs 1 --batch-size 10 --lr 1.47 --seed 0 \
     --client-speed lognormal --speed-sigma 1 --step-seconds 0.2 --target-accuracy 0.4"
  run shake_sync             $S --fraction 0.008 --rounds 400 --eval-every 4  # 10 clients a round
  run shake_deadline10       $S --fraction 0.008 --rounds 400 --eval-every 4 --deadline 10
  run shake_fedbuff_c20_k10  $S --execution async --concurrency 20 --buffer-size 10 --rounds 600 --eval-every 8
  run shake_fedasync_c10     $S --execution async --concurrency 10 --buffer-size 1 --rounds 3000 --eval-every 50
  run shake_fedbuff_c20_k5   $S --execution async --concurrency 20 --buffer-size 5 --rounds 1200 --eval-every 16
  run shake_fedbuff_c10_k5   $S --execution async --concurrency 10 --buffer-size 5 --rounds 1200 --eval-every 16
  ;;
esac; done
echo "== $(date -u +%H:%M:%S) done"
