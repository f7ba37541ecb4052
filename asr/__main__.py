"""`python -m asr` (and `torchrun -m asr train ...`) is the `asr` command."""

import sys

from asr.cli import main

sys.exit(main())
