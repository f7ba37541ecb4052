#!/usr/bin/env bash
# Install what the project needs on a fresh Debian/Ubuntu machine with Python >= 3.10 (run as
# root, or with sudo rights for the system packages). Idempotent: a second run installs nothing.
#
#   bash recipes/setup.sh          # runtime: the package, and the Debian packages the synthetic
#                                  # corpus is made with (espeak-ng, sox, bible-kjv, fortunes-min)
#   bash recipes/setup.sh --dev    # also pytest, ruff and the test-only cross-checks
set -euo pipefail
cd "$(dirname "$0")/.."

extra=""
if [[ "${1:-}" == "--dev" ]]; then extra="[dev]"; fi

need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
command -v bible >/dev/null || need+=(bible-kjv bible-kjv-text)
[ -f /usr/share/games/fortunes/fortunes ] || need+=(fortunes-min)
if ((${#need[@]})); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

python3 -m pip install -q -e ".${extra}"
