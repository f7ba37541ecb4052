#!/usr/bin/env bash
# Install what the project needs on a fresh Debian machine with Python >= 3.10 (run as root,
# or with sudo rights for the system packages). Idempotent: a second run installs nothing.
#
#   bash recipes/setup.sh          # runtime: espeak-ng + sox (synthetic corpus), the package
#   bash recipes/setup.sh --dev    # also pytest, ruff and the test-only cross-checks
set -euo pipefail
cd "$(dirname "$0")/.."

extra=""
if [[ "${1:-}" == "--dev" ]]; then extra="[dev]"; fi

need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
if ((${#need[@]})); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

python3 -m pip install -q -e ".${extra}"
