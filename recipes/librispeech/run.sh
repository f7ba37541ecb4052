#!/usr/bin/env bash
# LibriSpeech, semi-supervised as in the paper: train-clean-100 labeled, train-clean-360 +
# train-other-500 (860 h) unlabeled, one CTC student with its EMA teacher, WER on dev/test.
#
#   recipes/librispeech/run.sh                                   # download, prepare, train on 1 GPU
#   recipes/librispeech/run.sh --corpus /data/librispeech-root   # an existing copy: no download
#   recipes/librispeech/run.sh --stage 4 --nproc 8               # train on 8 GPUs of this node
#   recipes/librispeech/run.sh --stage 4 --stop-stage 4 --nproc 8 --nnodes 4 --node-rank 0 \
#     --rdzv-endpoint head-node:29500                            # one of 4 nodes (torchrun rendezvous)
#   recipes/librispeech/run.sh --stage 4 train.max_minutes=60    # key=value overrides go to asr train
#
# Stages; each is skipped while the .done marker of what it makes exists (delete it to redo):
#   0 download the missing parts (openslr.org resource 12, md5-checked, resumable)   curl, tar
#   1 manifests, and the unlabeled parts combined into one split     asr prepare --combine
#   2 tar shards + indexes of the splits used                        asr shard
#   3 letter tokenizer (as in the paper)                             asr tokenizer
#   4 train: supervised, then pseudo-labels from the EMA teacher     asr train (torchrun)
#   5 evaluate the student and the teacher on dev and test           asr eval
#   6 the WER table                                                  asr results
# Markers: $exp/data/.corpus.done, .manifests.done, .shards.done, .tokenizer.done (stages 0-3),
# $exp/train/.done, $exp/eval/.done, $exp/.results.done.
#
# kappa = GPUs x accumulation x data.max_batch_seconds / scaling.reference_seconds: the config's
# base hyper-parameters hold at kappa = 1 and the scaling rules adapt them to the GPU count.
set -euo pipefail

stage=0
stop_stage=6
config=configs/librispeech_paper.yaml
exp=exp/librispeech             # everything goes here
corpus=""                       # holds LibriSpeech/<part>/ (default: $exp/corpus, filled by stage 0)
mirror=https://www.openslr.org/resources/12
parts="train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other"
combine="train-860=train-clean-360+train-other-500"   # NAME=A+B ..., as for asr prepare --combine
train_split=train-clean-100
unlabeled_split=train-860
dev_splits="dev-clean dev-other"                      # the first selects the best checkpoint
test_splits="test-clean test-other"
nproc=1                         # training processes (GPUs) per node
nnodes=1                        # nodes; more than one needs --rdzv-endpoint
node_rank=0
rdzv_endpoint=""                # HOST:PORT of the rendezvous, e.g. the first node
rdzv_id=asr-librispeech
overrides=()                    # key=value for asr train

help_options="--stage N --stop-stage N --config FILE --exp DIR --corpus DIR --mirror URL --parts 'P ...'
         --combine 'NAME=A+B ...' --train-split S --unlabeled-split S --dev-splits 'S ...'
         --test-splits 'S ...' --nproc N --nnodes N --node-rank N --rdzv-endpoint HOST:PORT
         --rdzv-id ID [key=value ...]"
# shellcheck source=recipes/shared/parse_options.sh
source "$(dirname "$0")/../shared/parse_options.sh"

read -ra parts <<< "$parts"
read -ra combine <<< "$combine"
read -ra dev_splits <<< "$dev_splits"
read -ra test_splits <<< "$test_splits"
corpus="${corpus:-$exp/corpus}"
data="$exp/data"
mkdir -p "$exp"

if [ "$nnodes" -gt 1 ] && [ -z "$rdzv_endpoint" ]; then
  echo "--nnodes $nnodes needs --rdzv-endpoint HOST:PORT" >&2; exit 2
fi
set_launcher "$nproc" "$nnodes" "$node_rank" "$rdzv_endpoint" "$rdzv_id"

# md5 sums published beside the archives (resources/12/md5sum.txt)
declare -A md5=(
  [train-clean-100]=2a93770f6d5c6c964bc36631d331a522
  [train-clean-360]=c0e676e450a7ff2f54aeade5171606fa
  [train-other-500]=d1a0fd59409feb2c614ce4d30c387708
  [dev-clean]=42e2234ba48799c1f50f24a7926300a1
  [dev-other]=c8d0bcc9cca99d4f8b62fcc847357931
  [test-clean]=32fa31d27d2e1cad72775fee3f4849a9
  [test-other]=fb5a50374b501bb3bac4815ee91d3135
)
md5_ok() { [ -f "$1" ] && [ "$(md5sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# One part: download (resuming a partial file), check, unpack beside the others, drop the archive.
# A part is unpacked into a scratch folder and moved into place, so LibriSpeech/<part>/ exists
# only when complete and a rerun after an interruption redoes just the unfinished part.
fetch_part() {
  local part="$1" archive="$corpus/$1.tar.gz" scratch="$corpus/.unpack-$1"
  if [ -d "$corpus/LibriSpeech/$part" ]; then log "$part: present in $corpus/LibriSpeech"; return; fi
  if [ -z "${md5[$part]:-}" ]; then echo "--parts: unknown LibriSpeech part '$part'" >&2; exit 2; fi
  if ! md5_ok "$archive" "${md5[$part]}"; then
    log "$part: downloading $mirror/$part.tar.gz"
    curl --fail --location --retry 10 --retry-delay 5 --continue-at - --output "$archive" "$mirror/$part.tar.gz" \
      || { echo "$part: download failed; rerun to resume it, or delete $archive to start over" >&2; exit 1; }
  fi
  if ! md5_ok "$archive" "${md5[$part]}"; then
    rm -f "$archive"
    echo "$archive: md5 mismatch (expected ${md5[$part]}); removed it, rerun to download again" >&2
    exit 1
  fi
  rm -rf "$scratch" && mkdir -p "$scratch" "$corpus/LibriSpeech"
  tar -xzf "$archive" -C "$scratch"
  cp -f "$scratch"/LibriSpeech/*.TXT "$corpus/LibriSpeech/"   # the same README, SPEAKERS, ... in every part
  mv "$scratch/LibriSpeech/$part" "$corpus/LibriSpeech/$part"
  rm -rf "$scratch" "$archive"
}

if run_stage 0 "$data/.corpus.done"; then
  log "Stage 0: LibriSpeech parts in $corpus"
  mkdir -p "$corpus"
  for part in "${parts[@]}"; do fetch_part "$part"; done
  mark_done "$data/.corpus.done"
fi

if run_stage 1 "$data/.manifests.done"; then
  log "Stage 1: manifests (+ ${combine[*]:-no combined split})"
  python -m asr prepare --corpus "$corpus" --out "$data" --splits "${parts[@]}" --combine "${combine[@]}"
  mark_done "$data/.manifests.done"
fi

if run_stage 2 "$data/.shards.done"; then
  log "Stage 2: shards"
  python -m asr shard --manifests "$data/manifests" --out "$data/shards" \
    --splits "$train_split" "$unlabeled_split" "${dev_splits[@]}" "${test_splits[@]}"
  mark_done "$data/.shards.done"
fi

if run_stage 3 "$data/.tokenizer.done"; then
  log "Stage 3: tokenizer"
  python -m asr tokenizer --out "$data/tokenizer" --kind letters --text-from "$data/manifests/$train_split.jsonl"
  mark_done "$data/.tokenizer.done"
fi

if run_stage 4 "$exp/train/.done"; then
  log "Stage 4: train on $nnodes node(s) x $nproc process(es)"
  "${asr_train[@]}" --config "$config" "data.shards_dir=$data/shards" "tokenizer.path=$data/tokenizer" \
    "data.train_split=$train_split" "data.unlabeled_split=$unlabeled_split" \
    "data.dev_splits=[$(IFS=,; echo "${dev_splits[*]}")]" "train.exp_dir=$exp/train" "${overrides[@]}"
  mark_done "$exp/train/.done"
fi

if run_stage 5 "$exp/eval/.done"; then
  log "Stage 5: evaluate"
  python -m asr eval --checkpoint "$exp/train" --data "$data/shards" --split "${dev_splits[@]}" "${test_splits[@]}" \
    --weights student --out "$exp/eval/student" --name "student"
  python -m asr eval --checkpoint "$exp/train" --data "$data/shards" --split "${dev_splits[@]}" "${test_splits[@]}" \
    --weights teacher --out "$exp/eval/teacher" --name "EMA teacher"
  mark_done "$exp/eval/.done"
fi

if run_stage 6 "$exp/.results.done"; then
  log "Stage 6: results"
  python -m asr results "$exp/eval/student" "$exp/eval/teacher" --out "$exp/RESULTS.md"
  mark_done "$exp/.results.done"
fi
