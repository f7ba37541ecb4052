# shellcheck shell=bash
# Sourced once by every recipe, after its option defaults: options, the project's Python, logging,
# stage markers and the training launcher, written once for all recipes.
#
# Options: `--name value` sets the recipe's variable `name` (dashes become underscores); only
# variables the recipe set before sourcing this file are options. A variable whose default is
# `false` is a flag: `--name` alone sets it to true. `key=value` words go to the array
# `overrides` when the recipe has one (they are for asr train). -h/--help prints the recipe's
# leading comment block and its `help_options` line(s).
#
# Stages: `run_stage N MARKER` is true when stage N is within --stage/--stop-stage and MARKER,
# the .done file of the artifact the stage makes, does not exist yet; `mark_done MARKER` makes
# it. Deleting a marker redoes what it guards.
# shellcheck disable=SC2154  # stage, stop_stage, help_options: the recipe's variables

_recipe_usage() {
  sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"   # the recipe's comment block
  echo "options: $help_options"
}

_recipe_unknown() {
  echo "unknown option: $1" >&2
  _recipe_usage >&2
  exit 2
}

while (($#)); do
  case "$1" in
    -h|--help) _recipe_usage; exit 0 ;;
    --*)
      _name=${1#--}
      _name=${_name//-/_}
      if ! [[ "$_name" =~ ^[a-z][a-z0-9_]*$ ]] || [ -z "${!_name+set}" ] \
          || [ "$_name" = help_options ] || [ "$_name" = overrides ]; then
        _recipe_unknown "$1"
      fi
      if [ "${!_name}" = false ]; then
        printf -v "$_name" true
        shift
      elif (($# < 2)); then
        echo "$1: expected a value" >&2
        exit 2
      else
        printf -v "$_name" '%s' "$2"
        shift 2
      fi
      ;;
    *=*)
      if ! declare -p overrides &>/dev/null; then _recipe_unknown "$1"; fi
      overrides+=("$1")
      shift
      ;;
    *) _recipe_unknown "$1" ;;
  esac
done
unset _name

# shellcheck source=recipes/shared/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# A line with the time, and the recipe file and line that logged it.
log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*"; }

run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ] && [ ! -e "$2" ]; }
mark_done() { mkdir -p "$(dirname "$1")" && touch "$1"; }

# set_launcher NPROC [NNODES NODE_RANK RDZV_ENDPOINT RDZV_ID]: `asr_train` becomes the command of
# asr train on NPROC processes of this node (torchrun beyond one), and with NNODES > 1 on every
# node through torchrun's rendezvous.
# shellcheck disable=SC2034  # asr_train is for the recipe
set_launcher() {
  local nproc="$1" nnodes="${2:-1}"
  if [ "$nnodes" -gt 1 ]; then
    asr_train=(torchrun --nnodes "$nnodes" --node-rank "$3" --nproc-per-node "$nproc"
               --rdzv-backend c10d --rdzv-endpoint "$4" --rdzv-id "$5" -m asr train)
  elif [ "$nproc" -gt 1 ]; then
    asr_train=(torchrun --standalone --nproc-per-node "$nproc" -m asr train)
  else
    asr_train=(python -m asr train)
  fi
}
