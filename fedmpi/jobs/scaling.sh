#!/bin/bash
# Strong or weak scaling study of one training config:
#
#     jobs/scaling.sh strong|weak [options] CONFIG [fedmpi flags...]
#     jobs/scaling.sh strong --local --ranks 1,2,3,5,9 configs/mnist_2nn_iid.toml --rounds 5
#
#   --ranks 1,2,3,5,9      rank counts P (P = 1: one process, server and worker at once)
#   --per-worker C         weak scaling: C clients per worker rank per round (m = C * (P - 1))
#   --out DIR              study folder (default runs/scaling-STUDY); run P goes to DIR/pNNN
#   --local                run here, one after another, with mpiexec (default: submit to SLURM)
#   --tasks-per-node N     SLURM: ranks per node (default 4); nodes = ceil(P / N)
#   --sbatch "OPTS"        SLURM: more sbatch options for every run (account, partition, GPUs)
#
# Strong scaling keeps K and the clients per round m of the config; weak scaling
# grows m with the workers. Each run's median round time (and its split) goes
# into DIR/results.csv (python -m fedmpi.scaling gather), drawn as speedup and
# parallel efficiency in DIR/scaling.png (python -m fedmpi.plot scaling). On
# SLURM the runs go one at a time (--dependency=singleton, --exclusive) and a
# last job gathers and plots after them. --local runs every rank with 1 torch
# thread unless OMP_NUM_THREADS says otherwise.
set -euo pipefail
usage="usage: jobs/scaling.sh strong|weak [--ranks 1,2,3] [--per-worker C] [--out DIR] [--local] \
[--tasks-per-node N] [--sbatch OPTS] CONFIG [fedmpi flags...]"
study=${1:-}
case $study in strong|weak) shift ;; *) echo "$usage" >&2; exit 2 ;; esac
ranks=1,2,3 per_worker=() out=runs/scaling-$study local=0 per_node=4 sbatch_opts=
while [ $# -gt 0 ]; do
    case $1 in
        --ranks) ranks=$2; shift 2 ;;
        --per-worker) per_worker=(--per-worker "$2"); shift 2 ;;
        --out) out=$2; shift 2 ;;
        --local) local=1; shift ;;
        --tasks-per-node) per_node=$2; shift 2 ;;
        --sbatch) sbatch_opts=$2; shift 2 ;;
        --) shift; break ;;
        --*) echo "jobs/scaling.sh: unknown option $1"$'\n'"$usage" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
config=$1
shift
jobs=$(cd "$(dirname "$0")" && pwd)
python -c "import fedmpi" 2> /dev/null || {
    echo "jobs/scaling.sh: the python on PATH ($(command -v python || echo none)) has no fedmpi; activate the venv first (. .venv/bin/activate)" >&2
    exit 2
}

plan=$(python -m fedmpi.scaling plan "$study" --ranks "$ranks" --out "$out" ${per_worker[@]+"${per_worker[@]}"} -- --config "$config" "$@")
mkdir -p "$out"
gather=(python -m fedmpi.scaling gather "$out" -o "$out/results.csv" --study "$study")
plot=(python -m fedmpi.plot scaling "$out/results.csv" -o "$out/scaling.png")

if [ "$local" = 1 ]; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    while IFS=$'\t' read -r p run flags; do
        echo "jobs/scaling.sh: P=$p -> $run"
        # shellcheck disable=SC2086  # flags: plain options from the plan (the run folder, maybe with spaces, apart)
        mpiexec -n "$p" python -m fedmpi --config "$config" "$@" $flags --out "$run" < /dev/null > "$out/p$(printf %03d "$p").log" 2>&1 \
            || { echo "jobs/scaling.sh: run P=$p failed; see $out/p$(printf %03d "$p").log" >&2; exit 1; }
    done <<< "$plan"
    "${gather[@]}"
    "${plot[@]}"
    exit 0
fi

ids=()
while IFS=$'\t' read -r p run flags; do
    nodes=$(( (p + per_node - 1) / per_node ))
    # shellcheck disable=SC2086  # option lists
    id=$(sbatch --parsable --job-name="fedmpi-scaling-$study" --dependency=singleton --exclusive \
        --nodes="$nodes" --ntasks="$p" --ntasks-per-node="$(( p < per_node ? p : per_node ))" \
        --output="$out/p$(printf %03d "$p").log" $sbatch_opts "$jobs/fedavg.sbatch" "$config" "$@" $flags --out "$run" \
        < /dev/null)
    echo "jobs/scaling.sh: P=$p -> $run (job $id)"
    ids+=("$id")
done <<< "$plan"
printf -v cmd '%q ' "${gather[@]}"
printf -v plot_cmd '%q ' "${plot[@]}"
id=$(sbatch --parsable --job-name="fedmpi-scaling-$study-gather" --dependency="afterany:$(IFS=:; echo "${ids[*]}")" \
    --ntasks=1 --output="$out/gather.log" --wrap "$cmd && $plot_cmd")
echo "jobs/scaling.sh: gather + plot: job $id -> $out/results.csv, $out/scaling.png"
