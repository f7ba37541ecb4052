#!/usr/bin/env bash
# The EMA Scaling Rule experiment ("How to Scale Your EMA", Busbridge et al. 2023) as one command:
# the same config and shards trained at several kappa (global batch / reference batch), with the
# teacher momentum scaled (rho -> rho^kappa, scaling.ema_rule=power) and left as it is
# (scaling.ema_rule=none); the optimizer follows its own rule in both. With the rule, the curves
# against hours of audio seen should match the kappa = 1 reference; without it they drift.
#
#   recipes/ema_scaling/run.sh                           # CPU toy: demo corpus, kappa 1 2 4 by accumulation
#   recipes/ema_scaling/run.sh --kappas "1 4" optim.lr=1e-3   # other kappa; key=value goes to every run
#   recipes/ema_scaling/run.sh --size gpu --nproc 8 --kappas "1 2 4 8"   # one GPU a unit of kappa
#   recipes/ema_scaling/run.sh --shared-warm-start       # one supervised phase, at the first kappa
#   recipes/ema_scaling/run.sh --from-scratch --kappas "1 2 4 8" --seeds "0 1 2" --parallel 12
#                                 # the paper's experiment: every run from step 0, three arms, seeds
#   recipes/librispeech/run.sh --stop-stage 3 && \
#     recipes/ema_scaling/run.sh --data exp/librispeech/data \
#       --config configs/librispeech_paper.yaml --base-nproc 8 --nproc 8 --kappas "1 2 4"
#
# kappa k runs on min(k x B, N) processes (B: --base-nproc, N: --nproc) with k x B / processes
# accumulation steps, so kappa = 1 is B processes without accumulation: the config's
# scaling.reference_seconds must equal B x data.max_batch_seconds (true of the shipped configs
# for B = 1, and of librispeech_paper.yaml for B = 8). Each run prints its kappa at start.
# The plan of runs comes from `python -m asr.sweep` (asr/sweep.py), which checks it first.
#
# Stages; each run or step is skipped while the .done marker of what it makes exists:
#   0 synthesize the corpus                               recipes/synth/run.sh stage 0
#   1 manifests                                           recipes/synth/run.sh stage 1
#   2 shards                                              recipes/synth/run.sh stage 2
#   3 tokenizer                                           recipes/synth/run.sh stage 3
#   4 supervised warm start per kappa (or one shared)     asr train, to the PL start   runs/kappaK-warm/.done
#   5 pseudo-labeled continuation per kappa and EMA rule  asr train, from a warm start runs/kappaK-RULE/.done
#   6 evaluate every student and teacher                  asr eval                     eval/NAME/.done
#   7 curves of all runs against audio seen               asr plot                     .plot.done
#   8 the table of final dev WERs                         asr results                  .results.done
#
# --from-scratch: every run trains from step 0 (supervised, then pseudo-labeled) for every seed, in
# three arms at each kappa > 1: progressive (rho^kappa, the optimizer's rule, the batch doubling
# every --ramp-hours of data up to kappa), rule (the same at the full batch from step 0) and
# rho-fixed (the ramp and the optimizer's rule, rho unscaled); one reference per seed at kappa 1.
# Stage 4 has nothing to do, stage 5 trains (--parallel runs at once, e.g. to fill one GPU with
# small models), stage 6 evaluates, stage 7 writes sweep_report.png (seed bands against data
# hours), sweep_report.md (mean and spread of the final dev WERs, a verdict per arm) and
# sweep_report.csv, and stage 8 has nothing more to do.
#
# The supervised phase has no teacher (ema.start=pl_start), so it is the same for both rules and
# runs once per kappa. At kappa = 1 the rules coincide: one run, the reference.
# With --shared-warm-start it runs once, at the first kappa listed, and every continuation starts
# from it (resuming at its own kappa): the teacher's rule is then compared from one common point,
# apart from how the optimizer's rule copes with the first few hundred steps.
set -euo pipefail

stage=0
stop_stage=8
size=demo                       # synthetic corpus: tiny, demo (CPU) or gpu
hours_scale=1                   # multiplies every split of the synthetic corpus
config=""                       # default: configs/synth_tiny.yaml (tiny, demo), configs/synth_base.yaml (gpu)
exp=exp/ema_scaling             # everything goes here
data=""                         # prepared shards/ + tokenizer/: skips stages 0-3 (default: $exp/data, made by them)
kappas="1 2 4"
nproc=1                         # most processes (GPUs) a run may use
base_nproc=1                    # processes of the kappa = 1 reference
shared_warm_start=false         # one warm start, at the first kappa
seed=0
from_scratch=false              # the paper's experiment: every run from step 0
seeds="0 1 2"                   # from scratch: one run per seed, arm and kappa
arms="progressive rule rho-fixed"
ramp_hours=1                    # from scratch: data hours between doublings of the progressive batch
parallel=1                      # from scratch: runs trained (and evaluated) at once
overrides=()                    # key=value for every asr train
help_options="--stage N --stop-stage N --size tiny|demo|gpu --hours-scale X --config FILE --exp DIR --data DIR
         --kappas 'K ...' --nproc N --base-nproc B --shared-warm-start --seed N [key=value ...]
         --from-scratch --seeds 'S ...' --arms 'A ...' --ramp-hours H --parallel N"
# shellcheck source=recipes/shared/parse_options.sh
source "$(dirname "$0")/../shared/parse_options.sh"

case "$size" in
  tiny|demo) config="${config:-configs/synth_tiny.yaml}" ;;
  gpu) config="${config:-configs/synth_base.yaml}" ;;
  *) echo "--size: expected tiny, demo or gpu, got '$size'" >&2; exit 2 ;;
esac

# The sweep, checked before any work: one tab-separated run a line (see asr/sweep.py).
sweep_args=(--kappas "$kappas" --nproc "$nproc" --base-nproc "$base_nproc")
if [ "$shared_warm_start" = true ]; then sweep_args+=(--shared-warm-start); fi
if [ "$from_scratch" = true ]; then
  sweep_args+=(--from-scratch --seeds "$seeds" --arms "$arms" --ramp-hours "$ramp_hours")
fi
plan=$(python -m asr.sweep "${sweep_args[@]}")
# Read into arrays before any run: a command in a loop must not read the plan from stdin.
mapfile -t warm_runs < <(awk -F'\t' '$1 == "warm"' <<< "$plan")
mapfile -t pl_runs < <(awk -F'\t' '$1 == "pl"' <<< "$plan")
mapfile -t scratch_runs < <(awk -F'\t' '$1 == "scratch"' <<< "$plan")

runs="$exp/runs"
mkdir -p "$exp" "$runs"
if [ -z "$data" ]; then
  data="$exp/data"
  if [ "$stage" -le 3 ]; then  # the synthetic recipe's data stages, into $exp/data
    recipes=$(dirname "$0")/..
    bash "$recipes/synth/run.sh" --exp "$exp" --stage "$stage" --stop-stage "$((stop_stage < 3 ? stop_stage : 3))" \
      --size "$size" --hours-scale "$hours_scale" --seed "$seed"
  fi
fi
common=(--config "$config" "data.shards_dir=$data/shards" "tokenizer.path=$data/tokenizer" "train.seed=$seed")

# Up to --parallel jobs at once; a failed job leaves no .done marker, checked once all have ended.
wait_for_slot() { while (($(jobs -rp | wc -l) >= parallel)); do wait -n || true; done; }
wait_for_all() { while (($(jobs -rp | wc -l))); do wait -n || true; done; }
mkdir -p "$runs" "$exp/eval"

for row in "${scratch_runs[@]}"; do
  IFS=$'\t' read -r _ name kappa arm procs _ _ _ run_overrides <<< "$row"
  run_stage 5 "$runs/$name/.done" || continue
  set_launcher "$procs"
  read -r -a run_args <<< "$run_overrides"
  wait_for_slot
  log "Stage 5: from step 0 at kappa $kappa, arm $arm: $name"
  { "${asr_train[@]}" "${common[@]}" "train.exp_dir=$runs/$name" pl.enabled=true "${run_args[@]}" \
      "${overrides[@]}" > "$runs/$name.log" 2>&1 && mark_done "$runs/$name/.done"; } &
done
wait_for_all

for row in "${scratch_runs[@]}"; do
  IFS=$'\t' read -r _ name _ _ _ _ _ label _ <<< "$row"
  [ -e "$runs/$name/.done" ] || [ "$stage" -gt 5 ] || [ "$stop_stage" -lt 5 ] \
    || { echo "run $name failed: see $runs/$name.log" >&2; exit 1; }
  for weights in student teacher; do
    run_stage 6 "$exp/eval/$name-$weights/.done" || continue
    wait_for_slot
    log "Stage 6: evaluate the $weights of $name"
    { python -m asr eval --checkpoint "$runs/$name" --data "$data/shards" --weights "$weights" \
        --out "$exp/eval/$name-$weights" --name "$label ($weights)" > "$exp/eval/$name-$weights.log" 2>&1 \
        && mark_done "$exp/eval/$name-$weights/.done"; } &
  done
done
wait_for_all
for row in "${scratch_runs[@]}"; do
  IFS=$'\t' read -r _ name _ _ _ _ _ _ _ <<< "$row"
  for weights in student teacher; do
    [ -e "$exp/eval/$name-$weights/.done" ] || [ "$stage" -gt 6 ] || [ "$stop_stage" -lt 6 ] \
      || { echo "evaluation $name-$weights failed: see $exp/eval/$name-$weights.log" >&2; exit 1; }
  done
done

if [ "$from_scratch" = true ] && run_stage 7 "$exp/.report.done"; then
  log "Stage 7: the from-scratch report"
  python -m asr.sweep_report --runs "$runs" --eval "$exp/eval" --out "$exp/sweep_report" \
    --title "$(basename "$config" .yaml), kappa $kappas, seeds $seeds"
  mark_done "$exp/.report.done"
fi
[ "$from_scratch" = true ] && exit 0

for row in "${warm_runs[@]}"; do
  IFS=$'\t' read -r _ name kappa _ procs accum _ _ <<< "$row"
  run_stage 4 "$runs/$name/.done" || continue
  set_launcher "$procs"
  log "Stage 4: supervised warm start at kappa $kappa (accumulation $accum)"
  # shellcheck disable=SC2016  # ${pl.start_hours} is an OmegaConf interpolation, for asr train
  "${asr_train[@]}" "${common[@]}" "train.exp_dir=$runs/$name" "train.accum_steps=$accum" \
    pl.enabled=false 'train.stop_hours=${pl.start_hours}' "${overrides[@]}"
  mark_done "$runs/$name/.done"
done

for row in "${pl_runs[@]}"; do
  IFS=$'\t' read -r _ name kappa rule procs accum init _ <<< "$row"
  run_stage 5 "$runs/$name/.done" || continue
  set_launcher "$procs"
  log "Stage 5: pseudo-labels at kappa $kappa, EMA rule $rule"
  "${asr_train[@]}" "${common[@]}" "train.exp_dir=$runs/$name" "train.accum_steps=$accum" \
    pl.enabled=true "scaling.ema_rule=$rule" "train.init_from=$runs/$init" "${overrides[@]}"
  mark_done "$runs/$name/.done"
done

for row in "${pl_runs[@]}"; do
  IFS=$'\t' read -r _ name kappa rule _ _ _ label <<< "$row"
  for weights in student teacher; do
    run_stage 6 "$exp/eval/$name-$weights/.done" || continue
    log "Stage 6: evaluate the $weights of kappa $kappa, EMA rule $rule"
    python -m asr eval --checkpoint "$runs/$name" --data "$data/shards" --weights "$weights" \
      --out "$exp/eval/$name-$weights" --name "$label ($weights)"
    mark_done "$exp/eval/$name-$weights/.done"
  done
done

if run_stage 7 "$exp/.plot.done"; then
  log "Stage 7: curves"
  curves=()
  for row in "${pl_runs[@]}"; do
    IFS=$'\t' read -r _ name _ _ _ _ init label <<< "$row"
    curves+=("$label=$runs/$init,$runs/$name")
  done
  python -m asr plot --runs "${curves[@]}" --out "$exp/ema_scaling.png" \
    --title "EMA Scaling Rule: $(basename "$config" .yaml), kappa $kappas"
  mark_done "$exp/.plot.done"
fi

if run_stage 8 "$exp/.results.done"; then
  log "Stage 8: final dev WERs"
  evals=()
  for row in "${pl_runs[@]}"; do
    IFS=$'\t' read -r _ name _ _ _ _ _ _ <<< "$row"
    evals+=("$exp/eval/$name-student" "$exp/eval/$name-teacher")
  done
  python -m asr results "${evals[@]}" --out "$exp/RESULTS.md"
  mark_done "$exp/.results.done"
fi
