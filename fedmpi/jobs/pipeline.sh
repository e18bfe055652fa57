#!/bin/bash
# Submit data preparation -> training -> accuracy plot as three SLURM jobs, each
# starting only if the one before succeeded (--dependency=afterok):
#
#     jobs/pipeline.sh CONFIG DATA RUN [data_prep flags...] [-- fedmpi flags...]
#     jobs/pipeline.sh configs/mnist_2nn_iid.toml data/pipeline-iid-100 runs/pipeline_2nn_iid \
#         --dataset mnist --partition iid --clients 100 -- --rounds 50
#
# DATA is data_prep's --out and fedmpi's --data; RUN is fedmpi's --out (both new:
# data_prep and fedmpi refuse existing ones without --overwrite); the plot
# lands in RUN/accuracy.png. Extra sbatch options for the training job (sizes,
# account) go in FEDMPI_TRAIN_SBATCH, e.g. "--nodes=2 --ntasks-per-node=8".
# Prints the three job ids.
set -euo pipefail
usage="usage: jobs/pipeline.sh CONFIG DATA RUN [data_prep flags...] [-- fedmpi flags...]"
[ $# -ge 3 ] || { echo "$usage" >&2; exit 2; }
config=$1 data=$2 run=$3
shift 3
prep_flags=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do prep_flags+=("$1"); shift; done
[ $# -gt 0 ] && shift   # the --
jobs=$(cd "$(dirname "$0")" && pwd)

prep=$(sbatch --parsable "$jobs/prep.sbatch" ${prep_flags[@]+"${prep_flags[@]}"} --out "$data")
# shellcheck disable=SC2086  # FEDMPI_TRAIN_SBATCH is a list of options
train=$(sbatch --parsable --dependency="afterok:$prep" --kill-on-invalid-dep=yes ${FEDMPI_TRAIN_SBATCH:-} \
    "$jobs/fedavg.sbatch" "$config" --data "$data" --out "$run" "$@")
printf -v plot_cmd '%q ' python -m fedmpi.plot "$run" -o "$run/accuracy.png"
plot=$(sbatch --parsable --dependency="afterok:$train" --kill-on-invalid-dep=yes --job-name=fedavg-plot \
    --ntasks=1 --time=00:10:00 --output=%x-%j.out --wrap "$plot_cmd")
echo "prep $prep  train $train  plot $plot"
