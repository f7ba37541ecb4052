#!/usr/bin/env bash
# The synthetic demo, end to end: corpus -> manifests -> shards -> tokenizer -> supervised warm
# start -> (supervised-only | pseudo-labeled) continuation from the same checkpoint -> WER table.
#
#   recipes/synth/run.sh                          # CPU demo (~2M-parameter model, minutes)
#   recipes/synth/run.sh --size gpu               # 54 h of audio, 105M model: ~12.5 min on one H100
#   recipes/synth/run.sh --stage 4 --stop-stage 6 # only some stages; finished ones are skipped
#
# Stages (each leaves a .done marker under the experiment folder; delete it to redo a stage):
#   0 synthesize the corpus            asr synth
#   1 scan it into manifests           asr prepare
#   2 write tar shards + indexes       asr shard
#   3 build the tokenizer              asr tokenizer
#   4 supervised warm start            asr train (stops at the pseudo-label start)
#   5 supervised-only continuation     asr train train.init_from=<warm start>
#   6 pseudo-labeled continuation      asr train train.init_from=<warm start> pl.enabled=true
#   7 evaluate students and teacher    asr eval
#   8 the WER table                    asr results
set -euo pipefail

stage=0
stop_stage=8
size=demo          # demo (CPU) or gpu
hours_scale=1     # multiplies every split of the corpus (e.g. 0.25 for a quick GPU check)
exp=exp/synth      # everything goes here
seed=0
nproc=1            # processes for training (torchrun --nproc-per-node)

usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; echo "options: --stage N --stop-stage N --size demo|gpu --hours-scale X --exp DIR --seed N --nproc N"; }
while (($#)); do
  case "$1" in
    --stage) stage="$2"; shift 2 ;;
    --stop-stage) stop_stage="$2"; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --hours-scale) hours_scale="$2"; shift 2 ;;
    --exp) exp="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --nproc) nproc="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

case "$size" in
  demo) config=configs/synth_tiny.yaml ;;
  gpu)  config=configs/synth_base.yaml ;;
  *) echo "--size: expected demo or gpu, got '$size'" >&2; exit 2 ;;
esac

# shellcheck source=recipes/shared/env.sh
source "$(dirname "$0")/../shared/env.sh"
log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (${BASH_SOURCE[0]##*/}:${BASH_LINENO[0]}) $*"; }
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ] && [ ! -f "$exp/.done.$1" ]; }
done_stage() { touch "$exp/.done.$1"; }

if [ "$nproc" -gt 1 ]; then asr_train=(torchrun --standalone --nproc-per-node "$nproc" -m asr train)
else asr_train=(python -m asr train); fi

data="$exp/data"
mkdir -p "$exp"
common=(--config "$config" "data.shards_dir=$data/shards" "tokenizer.path=$exp/tokenizer" "train.seed=$seed")

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
  python -m asr tokenizer --out "$exp/tokenizer" --kind letters --text-from "$data/manifests/train-clean.jsonl"
  done_stage 3
fi

if run_stage 4; then
  log "Stage 4: supervised warm start (stops at the pseudo-label start)"
  # shellcheck disable=SC2016  # ${pl.start_hours} is an OmegaConf interpolation, for asr train
  "${asr_train[@]}" "${common[@]}" "train.exp_dir=$exp/warm" pl.enabled=false 'train.stop_hours=${pl.start_hours}'
  done_stage 4
fi

if run_stage 5; then
  log "Stage 5: supervised-only continuation (the baseline)"
  "${asr_train[@]}" "${common[@]}" "train.exp_dir=$exp/supervised" pl.enabled=false "train.init_from=$exp/warm"
  done_stage 5
fi

if run_stage 6; then
  log "Stage 6: pseudo-labeled continuation (EMA teacher)"
  "${asr_train[@]}" "${common[@]}" "train.exp_dir=$exp/pseudo_label" pl.enabled=true "train.init_from=$exp/warm"
  done_stage 6
fi

splits=(dev-clean dev-other test-clean test-other)
if run_stage 7; then
  log "Stage 7: evaluate"
  python -m asr eval --checkpoint "$exp/supervised" --data "$data/shards" --split "${splits[@]}" \
    --weights student --out "$exp/eval/supervised-student" --name "supervised only (student)"
  python -m asr eval --checkpoint "$exp/pseudo_label" --data "$data/shards" --split "${splits[@]}" \
    --weights student --out "$exp/eval/pl-student" --name "pseudo-labeled (student)"
  python -m asr eval --checkpoint "$exp/pseudo_label" --data "$data/shards" --split "${splits[@]}" \
    --weights teacher --out "$exp/eval/pl-teacher" --name "pseudo-labeled (EMA teacher)"
  done_stage 7
fi

if run_stage 8; then
  log "Stage 8: results"
  python -m asr results "$exp/eval/supervised-student" "$exp/eval/pl-student" "$exp/eval/pl-teacher" \
    --out "$exp/RESULTS.md"
  done_stage 8
fi
