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
#   recipes/librispeech/run.sh --stop-stage 3 && \
#     recipes/ema_scaling/run.sh --data exp/librispeech/data \
#       --config configs/librispeech_paper.yaml --base-nproc 8 --nproc 8 --kappas "1 2 4"
#
# kappa k runs on min(k x B, N) processes (B: --base-nproc, N: --nproc) with k x B / processes
# accumulation steps, so kappa = 1 is B processes without accumulation: the config's
# scaling.reference_seconds must equal B x data.max_batch_seconds (true of the shipped configs
# for B = 1, and of librispeech_paper.yaml for B = 8). Each run prints its kappa at start.
#
# Stages (each leaves a .done marker under the experiment folder; delete it to redo a stage):
#   0 synthesize the corpus                               asr synth
#   1 manifests                                           asr prepare
#   2 shards                                              asr shard
#   3 tokenizer                                           asr tokenizer
#   4 supervised warm start per kappa (or one shared)     asr train (stops at the pseudo-label start)
#   5 pseudo-labeled continuation per kappa and EMA rule  asr train train.init_from=<warm start>
#   6 evaluate every student and teacher                  asr eval
#   7 curves of all runs against audio seen               asr plot
#   8 the table of final dev WERs                         asr results
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
shared_warm=false               # --shared-warm-start: one warm start, at the first kappa
seed=0
overrides=()                    # key=value for every asr train

usage() {
  sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"   # the comment block above
  echo "options: --stage N --stop-stage N --size tiny|demo|gpu --hours-scale X --config FILE --exp DIR --data DIR"
  echo "         --kappas 'K ...' --nproc N --base-nproc B --shared-warm-start --seed N [key=value ...]"
}
while (($#)); do
  case "$1" in
    --stage) stage="$2"; shift 2 ;;
    --stop-stage) stop_stage="$2"; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --hours-scale) hours_scale="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --exp) exp="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --kappas) kappas="$2"; shift 2 ;;
    --nproc) nproc="$2"; shift 2 ;;
    --base-nproc) base_nproc="$2"; shift 2 ;;
    --shared-warm-start) shared_warm=true; shift ;;
    --seed) seed="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *=*) overrides+=("$1"); shift ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

case "$size" in
  tiny|demo) config="${config:-configs/synth_tiny.yaml}" ;;
  gpu) config="${config:-configs/synth_base.yaml}" ;;
  *) echo "--size: expected tiny, demo or gpu, got '$size'" >&2; exit 2 ;;
esac

# shellcheck source=recipes/shared/env.sh
source "$(dirname "$0")/../shared/env.sh"
log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (${BASH_SOURCE[0]##*/}:${BASH_LINENO[0]}) $*"; }
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ] && [ ! -f "$exp/.done.$1" ]; }
done_stage() { touch "$exp/.done.$1"; }

# The launcher and accumulation of kappa $1: sets `asr_train` and `accum`.
launcher() {
  local units=$(($1 * base_nproc)) procs
  procs=$((units < nproc ? units : nproc))
  if ((units % procs)); then
    echo "kappa $1: $units reference processes' batch is not a multiple of --nproc $nproc" >&2; exit 2
  fi
  accum=$((units / procs))
  if [ "$procs" -gt 1 ]; then asr_train=(torchrun --standalone --nproc-per-node "$procs" -m asr train)
  else asr_train=(python -m asr train); fi
}

# The sweep: "kappa rule" pairs, the plot's legend names and the eval folders, in one order.
read -ra kappas <<< "$kappas"
sweep=()
for kappa in "${kappas[@]}"; do
  if ! [[ "$kappa" =~ ^[1-9][0-9]*$ ]]; then echo "--kappas: expected positive integers, got '$kappa'" >&2; exit 2; fi
  if [ "$kappa" -eq 1 ]; then sweep+=("1 power"); else sweep+=("$kappa power" "$kappa none"); fi
done
warm_kappas=("${kappas[@]}")
if [ "$shared_warm" = true ]; then warm_kappas=("${kappas[0]}"); fi
warm_of() { if [ "$shared_warm" = true ]; then echo "${kappas[0]}"; else echo "$1"; fi; }  # kappa -> its warm start's
label() {  # kappa rule -> legend name
  if [ "$1" -eq 1 ]; then echo "kappa 1, reference"
  elif [ "$2" = power ]; then echo "kappa $1, rho^kappa"
  else echo "kappa $1, rho unscaled"; fi
}

if [ -n "$data" ] && [ "$stage" -lt 4 ]; then stage=4; fi   # never synthesize into prepared data
data="${data:-$exp/data}"
runs="$exp/runs"
mkdir -p "$exp"
common=(--config "$config" "data.shards_dir=$data/shards" "tokenizer.path=$data/tokenizer" "train.seed=$seed")

if run_stage 0; then
  log "Stage 0: synthesize the $size corpus"
  python -m asr synth --out "$data/corpus" --size "$size" --hours-scale "$hours_scale" --seed "$seed" --overwrite
  done_stage 0
fi

if run_stage 1; then
  log "Stage 1: manifests"
  python -m asr prepare --corpus "$data/corpus" --out "$data"
  done_stage 1
fi

if run_stage 2; then
  log "Stage 2: shards"
  python -m asr shard --manifests "$data/manifests" --out "$data/shards"
  done_stage 2
fi

if run_stage 3; then
  log "Stage 3: tokenizer"
  python -m asr tokenizer --out "$data/tokenizer" --kind letters --text-from "$data/manifests/train-clean.jsonl"
  done_stage 3
fi

if run_stage 4; then
  for kappa in "${warm_kappas[@]}"; do
    launcher "$kappa"
    log "Stage 4: supervised warm start at kappa $kappa (accumulation $accum)"
    # shellcheck disable=SC2016  # ${pl.start_hours} is an OmegaConf interpolation, for asr train
    "${asr_train[@]}" "${common[@]}" "train.exp_dir=$runs/kappa$kappa-warm" "train.accum_steps=$accum" \
      pl.enabled=false 'train.stop_hours=${pl.start_hours}' "${overrides[@]}"
  done
  done_stage 4
fi

if run_stage 5; then
  for run in "${sweep[@]}"; do
    read -r kappa rule <<< "$run"
    launcher "$kappa"
    log "Stage 5: pseudo-labels at kappa $kappa, EMA rule $rule"
    "${asr_train[@]}" "${common[@]}" "train.exp_dir=$runs/kappa$kappa-$rule" "train.accum_steps=$accum" \
      pl.enabled=true "scaling.ema_rule=$rule" "train.init_from=$runs/kappa$(warm_of "$kappa")-warm" "${overrides[@]}"
  done
  done_stage 5
fi

if run_stage 6; then
  for run in "${sweep[@]}"; do
    read -r kappa rule <<< "$run"
    for weights in student teacher; do
      log "Stage 6: evaluate the $weights of kappa $kappa, EMA rule $rule"
      python -m asr eval --checkpoint "$runs/kappa$kappa-$rule" --data "$data/shards" --weights "$weights" \
        --out "$exp/eval/kappa$kappa-$rule-$weights" --name "$(label "$kappa" "$rule") ($weights)"
    done
  done
  done_stage 6
fi

if run_stage 7; then
  log "Stage 7: curves"
  curves=()
  for run in "${sweep[@]}"; do
    read -r kappa rule <<< "$run"
    curves+=("$(label "$kappa" "$rule")=$runs/kappa$(warm_of "$kappa")-warm,$runs/kappa$kappa-$rule")
  done
  python -m asr plot --runs "${curves[@]}" --out "$exp/ema_scaling.png" \
    --title "EMA Scaling Rule: $(basename "$config" .yaml), kappa ${kappas[*]}"
  done_stage 7
fi

if run_stage 8; then
  log "Stage 8: final dev WERs"
  evals=()
  for run in "${sweep[@]}"; do
    read -r kappa rule <<< "$run"
    evals+=("$exp/eval/kappa$kappa-$rule-student" "$exp/eval/kappa$kappa-$rule-teacher")
  done
  python -m asr results "${evals[@]}" --out "$exp/RESULTS.md"
  done_stage 8
fi
