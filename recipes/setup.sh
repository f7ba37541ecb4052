#!/usr/bin/env bash
# Install the project into a virtual environment, on a fresh Debian/Ubuntu machine with
# Python >= 3.10 (as root, or with sudo rights for the system packages).
#
#   bash recipes/setup.sh          # runtime: the package, and the Debian packages the synthetic
#                                  # corpus is made with (espeak-ng, sox, bible-kjv, fortunes-min)
#   bash recipes/setup.sh --dev    # also pytest, ruff, the test-only cross-checks, every optional
#                                  # dependency that has CPU tests (beam, lhotse) and shellcheck
#
# Where it installs: the virtual environment that is active ($VIRTUAL_ENV), else ./.venv in the
# checkout (created on the first run, reused after). The recipes find ./.venv by themselves; no
# activation is needed. A second run with nothing changed installs nothing.
#
# What it installs: exactly the versions in recipes/constraints.txt, the set the tests ran on,
# torch 2.11.0 with torchaudio 2.11.0 among them. To use another torch/torchaudio pair (another
# CUDA build, a CPU-only index, a newer release), name it in ASR_TORCH; the other pins stay:
#
#   ASR_TORCH="torch==2.9.1 torchaudio==2.9.1 --index-url https://download.pytorch.org/whl/cpu" \
#     bash recipes/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

extras=""
for arg in "$@"; do
  case "$arg" in
    --dev) extras="[dev,beam,lhotse,export]" ;;
    -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option: $arg (expected --dev)" >&2; exit 2 ;;
  esac
done

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (setup.sh) $*"; }

sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
apt_install() {
  log "apt-get install $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# --- Debian packages --------------------------------------------------------------------------
need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
command -v bible >/dev/null || need+=(bible-kjv bible-kjv-text)
[ -f /usr/share/games/fortunes/fortunes ] || need+=(fortunes-min)
if [ -n "$extras" ]; then
  command -v shellcheck >/dev/null || need+=(shellcheck)
  command -v curl >/dev/null || need+=(curl)
fi
if [ -z "${VIRTUAL_ENV:-}" ] && [ ! -x .venv/bin/python ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  need+=(python3-venv)  # Debian ships venv and ensurepip apart from python3
fi
if ((${#need[@]})); then apt_install "${need[@]}"; fi

# --- the virtual environment ------------------------------------------------------------------
if [ -n "${VIRTUAL_ENV:-}" ]; then
  venv=$VIRTUAL_ENV
  log "using the active virtual environment $venv"
  # The recipes and the README's commands look for ./.venv: point it at the active one.
  if [ ! -e .venv ]; then ln -s "$venv" .venv
  elif [ "$(cd .venv && pwd -P)" != "$(cd "$venv" && pwd -P)" ]; then
    log "warning: ./.venv is another environment; the recipes prefer the active one while it is active"
  fi
else
  venv=$root/.venv
  if [ ! -x "$venv/bin/python" ]; then
    log "creating the virtual environment $venv"
    python3 -m venv "$venv"
  fi
fi
python=$venv/bin/python
"$python" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
  || { echo "setup.sh: $python is older than Python 3.10" >&2; exit 1; }

# --- Python packages, resolved to the tested set ----------------------------------------------
constraints=recipes/constraints.txt
torch_spec=${ASR_TORCH:-}
stamp=$venv/.asr-setup
want=$(cat pyproject.toml "$constraints" | sha256sum | cut -c1-16)" extras=$extras torch=$torch_spec"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" == "$want" ] && "$python" -c 'import asr' 2>/dev/null; then
  log "$venv is up to date"
  exit 0
fi

start=$(date +%s)
pip=("$python" -m pip install --quiet --disable-pip-version-check)
if [ -n "$torch_spec" ]; then
  # Another pair: keep every pin but those of torch, torchaudio and the CUDA libraries they bring.
  log "installing the requested torch pair: $torch_spec"
  # shellcheck disable=SC2086  # ASR_TORCH is a list of pip arguments
  "${pip[@]}" $torch_spec
  { grep -v -E '^(torch|torchaudio|triton|nvidia-|cuda-)' "$constraints" || true; } > "$venv/.asr-constraints"
  constraints=$venv/.asr-constraints
fi
log "installing the project$extras into $venv (pinned by $constraints)"
"${pip[@]}" --constraint "$constraints" --editable ".$extras"
echo "$want" > "$stamp"
log "done in $(( $(date +%s) - start )) s; $("$python" -m asr --version | head -1)"
