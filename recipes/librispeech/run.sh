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
# Stages (each leaves a .done marker under the experiment folder; delete it to redo a stage):
#   0 download the missing parts (openslr.org resource 12, md5-checked, resumable)   curl, tar
#   1 manifests, and the unlabeled parts combined into one split     asr prepare --combine
#   2 tar shards + indexes of the splits used                        asr shard
#   3 letter tokenizer (as in the paper)                             asr tokenizer
#   4 train: supervised, then pseudo-labels from the EMA teacher     asr train (torchrun)
#   5 evaluate the student and the teacher on dev and test           asr eval
#   6 the WER table                                                  asr results
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

usage() {
  sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"   # the comment block above
  echo "options: --stage N --stop-stage N --config FILE --exp DIR --corpus DIR --mirror URL --parts 'P ...'"
  echo "         --combine 'NAME=A+B ...' --train-split S --unlabeled-split S --dev-splits 'S ...'"
  echo "         --test-splits 'S ...' --nproc N --nnodes N --node-rank N --rdzv-endpoint HOST:PORT"
  echo "         --rdzv-id ID [key=value ...]"
}
while (($#)); do
  case "$1" in
    --stage) stage="$2"; shift 2 ;;
    --stop-stage) stop_stage="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --exp) exp="$2"; shift 2 ;;
    --corpus) corpus="$2"; shift 2 ;;
    --mirror) mirror="$2"; shift 2 ;;
    --parts) parts="$2"; shift 2 ;;
    --combine) combine="$2"; shift 2 ;;
    --train-split) train_split="$2"; shift 2 ;;
    --unlabeled-split) unlabeled_split="$2"; shift 2 ;;
    --dev-splits) dev_splits="$2"; shift 2 ;;
    --test-splits) test_splits="$2"; shift 2 ;;
    --nproc) nproc="$2"; shift 2 ;;
    --nnodes) nnodes="$2"; shift 2 ;;
    --node-rank) node_rank="$2"; shift 2 ;;
    --rdzv-endpoint) rdzv_endpoint="$2"; shift 2 ;;
    --rdzv-id) rdzv_id="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *=*) overrides+=("$1"); shift ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

# shellcheck source=recipes/shared/env.sh
source "$(dirname "$0")/../shared/env.sh"
log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (${BASH_SOURCE[0]##*/}:${BASH_LINENO[0]}) $*"; }
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ] && [ ! -f "$exp/.done.$1" ]; }
done_stage() { touch "$exp/.done.$1"; }

read -ra parts <<< "$parts"
read -ra combine <<< "$combine"
read -ra dev_splits <<< "$dev_splits"
read -ra test_splits <<< "$test_splits"
corpus="${corpus:-$exp/corpus}"
data="$exp/data"
mkdir -p "$exp"

if [ "$nnodes" -gt 1 ]; then
  if [ -z "$rdzv_endpoint" ]; then echo "--nnodes $nnodes needs --rdzv-endpoint HOST:PORT" >&2; exit 2; fi
  asr_train=(torchrun --nnodes "$nnodes" --node-rank "$node_rank" --nproc-per-node "$nproc"
             --rdzv-backend c10d --rdzv-endpoint "$rdzv_endpoint" --rdzv-id "$rdzv_id" -m asr train)
elif [ "$nproc" -gt 1 ]; then
  asr_train=(torchrun --standalone --nproc-per-node "$nproc" -m asr train)
else
  asr_train=(python -m asr train)
fi

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

if run_stage 0; then
  log "Stage 0: LibriSpeech parts in $corpus"
  mkdir -p "$corpus"
  for part in "${parts[@]}"; do fetch_part "$part"; done
  done_stage 0
fi

if run_stage 1; then
  log "Stage 1: manifests (+ ${combine[*]:-no combined split})"
  python -m asr prepare --corpus "$corpus" --out "$data" --splits "${parts[@]}" --combine "${combine[@]}"
  done_stage 1
fi

if run_stage 2; then
  log "Stage 2: shards"
  python -m asr shard --manifests "$data/manifests" --out "$data/shards" \
    --splits "$train_split" "$unlabeled_split" "${dev_splits[@]}" "${test_splits[@]}"
  done_stage 2
fi

if run_stage 3; then
  log "Stage 3: tokenizer"
  python -m asr tokenizer --out "$data/tokenizer" --kind letters --text-from "$data/manifests/$train_split.jsonl"
  done_stage 3
fi

if run_stage 4; then
  log "Stage 4: train on $nnodes node(s) x $nproc process(es)"
  "${asr_train[@]}" --config "$config" "data.shards_dir=$data/shards" "tokenizer.path=$data/tokenizer" \
    "data.train_split=$train_split" "data.unlabeled_split=$unlabeled_split" \
    "data.dev_splits=[$(IFS=,; echo "${dev_splits[*]}")]" "train.exp_dir=$exp/train" "${overrides[@]}"
  done_stage 4
fi

if run_stage 5; then
  log "Stage 5: evaluate"
  python -m asr eval --checkpoint "$exp/train" --data "$data/shards" --split "${dev_splits[@]}" "${test_splits[@]}" \
    --weights student --out "$exp/eval/student" --name "student"
  python -m asr eval --checkpoint "$exp/train" --data "$data/shards" --split "${dev_splits[@]}" "${test_splits[@]}" \
    --weights teacher --out "$exp/eval/teacher" --name "EMA teacher"
  done_stage 5
fi

if run_stage 6; then
  log "Stage 6: results"
  python -m asr results "$exp/eval/student" "$exp/eval/teacher" --out "$exp/RESULTS.md"
  done_stage 6
fi
