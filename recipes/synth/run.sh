#!/usr/bin/env bash
# The synthetic demo, end to end: corpus -> manifests -> shards -> tokenizer -> supervised warm
# start -> (supervised-only | pseudo-labeled) continuation from the same checkpoint -> WER table.
#
#   recipes/synth/run.sh                          # CPU demo (~2M-parameter model, minutes)
#   recipes/synth/run.sh --size gpu               # 54 h of audio, 105M model: ~12.5 min on one H100
#   recipes/synth/run.sh --stage 4 --stop-stage 6 # only some stages; finished ones are skipped
#   recipes/synth/run.sh --stop-stage 3           # only the data: corpus, manifests, shards, tokenizer
#
# Stages; each is skipped while the .done marker of what it makes exists (delete it to redo):
#   0 synthesize the corpus            asr synth                              $exp/data/.corpus.done
#   1 scan it into manifests           asr prepare                            $exp/data/.manifests.done
#   2 write tar shards + indexes       asr shard                              $exp/data/.shards.done
#   3 build the tokenizer              asr tokenizer                          $exp/data/.tokenizer.done
#   4 supervised warm start            asr train, to the pseudo-label start   $exp/warm/.done
#   5 supervised-only continuation     asr train, from the warm start         $exp/supervised/.done
#   6 pseudo-labeled continuation      asr train, from the warm start, PL on  $exp/pseudo_label/.done
#   7 evaluate students and teacher    asr eval                               $exp/eval/.done
#   8 the WER table, and curves.png    asr plot, asr results                  $exp/.results.done
#     (dev WER of student and teacher, training loss and the pseudo-labels' WER against data hours)
set -euo pipefail

stage=0
stop_stage=8
size=demo          # tiny, demo (CPU) or gpu
hours_scale=1      # multiplies every split of the corpus (e.g. 0.25 for a quick GPU check)
exp=exp/synth      # everything goes here; the data in $exp/data
seed=0
nproc=1            # processes for training (torchrun --nproc-per-node)
help_options="--stage N --stop-stage N --size tiny|demo|gpu --hours-scale X --exp DIR --seed N --nproc N"
# shellcheck source=recipes/shared/parse_options.sh
source "$(dirname "$0")/../shared/parse_options.sh"

case "$size" in
  tiny|demo) config=configs/synth_tiny.yaml ;;
  gpu)  config=configs/synth_base.yaml ;;
  *) echo "--size: expected tiny, demo or gpu, got '$size'" >&2; exit 2 ;;
esac
set_launcher "$nproc"

data="$exp/data"
mkdir -p "$exp"
common=(--config "$config" "data.shards_dir=$data/shards" "tokenizer.path=$data/tokenizer" "train.seed=$seed")

if run_stage 0 "$data/.corpus.done"; then
  log "Stage 0: synthesize the $size corpus"
  python -m asr synth --out "$data/corpus" --size "$size" --hours-scale "$hours_scale" --seed "$seed" --overwrite
  mark_done "$data/.corpus.done"
fi

if run_stage 1 "$data/.manifests.done"; then
  log "Stage 1: manifests"
  python -m asr prepare --corpus "$data/corpus" --out "$data"
  mark_done "$data/.manifests.done"
fi

if run_stage 2 "$data/.shards.done"; then
  log "Stage 2: shards"
  python -m asr shard --manifests "$data/manifests" --out "$data/shards"
  mark_done "$data/.shards.done"
fi

if run_stage 3 "$data/.tokenizer.done"; then
  log "Stage 3: tokenizer"
  python -m asr tokenizer --out "$data/tokenizer" --kind letters --text-from "$data/manifests/train-clean.jsonl"
  mark_done "$data/.tokenizer.done"
fi

if run_stage 4 "$exp/warm/.done"; then
  log "Stage 4: supervised warm start (stops at the pseudo-label start)"
  # shellcheck disable=SC2016  # ${pl.start_hours} is an OmegaConf interpolation, for asr train
  "${asr_train[@]}" "${common[@]}" "train.exp_dir=$exp/warm" pl.enabled=false 'train.stop_hours=${pl.start_hours}'
  mark_done "$exp/warm/.done"
fi

if run_stage 5 "$exp/supervised/.done"; then
  log "Stage 5: supervised-only continuation (the baseline)"
  "${asr_train[@]}" "${common[@]}" "train.exp_dir=$exp/supervised" pl.enabled=false "train.init_from=$exp/warm"
  mark_done "$exp/supervised/.done"
fi

if run_stage 6 "$exp/pseudo_label/.done"; then
  log "Stage 6: pseudo-labeled continuation (EMA teacher)"
  "${asr_train[@]}" "${common[@]}" "train.exp_dir=$exp/pseudo_label" pl.enabled=true "train.init_from=$exp/warm"
  mark_done "$exp/pseudo_label/.done"
fi

splits=(dev-clean dev-other test-clean test-other)
if run_stage 7 "$exp/eval/.done"; then
  log "Stage 7: evaluate"
  python -m asr eval --checkpoint "$exp/supervised" --data "$data/shards" --split "${splits[@]}" \
    --weights student --out "$exp/eval/supervised-student" --name "supervised only (student)"
  python -m asr eval --checkpoint "$exp/pseudo_label" --data "$data/shards" --split "${splits[@]}" \
    --weights student --out "$exp/eval/pl-student" --name "pseudo-labeled (student)"
  python -m asr eval --checkpoint "$exp/pseudo_label" --data "$data/shards" --split "${splits[@]}" \
    --weights teacher --out "$exp/eval/pl-teacher" --name "pseudo-labeled (EMA teacher)"
  mark_done "$exp/eval/.done"
fi

if run_stage 8 "$exp/.results.done"; then
  log "Stage 8: results"
  python -m asr plot --runs "supervised only=$exp/warm,$exp/supervised" "pseudo-labeled=$exp/warm,$exp/pseudo_label" \
    --out "$exp/curves.png" --title "synthetic demo ($size): supervised only vs pseudo-labeled" > /dev/null
  python -m asr results "$exp/eval/supervised-student" "$exp/eval/pl-student" "$exp/eval/pl-teacher" \
    --out "$exp/RESULTS.md"
  mark_done "$exp/.results.done"
fi
