# shellcheck shell=bash
# Sourced by every recipe: run the project's Python without asking anyone to activate anything.
# The active virtual environment wins; else the checkout's .venv that recipes/setup.sh made.
_asr_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$_asr_root/.venv/bin/python" ]; then
  export VIRTUAL_ENV="$_asr_root/.venv"
  export PATH="$VIRTUAL_ENV/bin:$PATH"
fi
if ! python -c 'import asr' 2>/dev/null; then
  echo "${0##*/}: the asr package is not installed for $(command -v python || echo python);" \
       "run: bash recipes/setup.sh" >&2
  exit 1
fi
unset _asr_root
