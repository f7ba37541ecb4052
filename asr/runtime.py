"""Where the code runs: library versions, and (for training and evaluation) rank, device and precision."""

from __future__ import annotations

import platform


def version_report() -> str:
    """The versions a bug report needs: this package, Python, torch, torchaudio, CUDA, cuDNN."""
    import torch
    import torchaudio

    import asr

    cuda = torch.version.cuda or "none (CPU build)"
    lines = [
        f"asr {asr.__version__}",
        f"python {platform.python_version()} ({platform.system()} {platform.machine()})",
        f"torch {torch.__version__} (CUDA {cuda}"
        + (f", cuDNN {torch.backends.cudnn.version()}" if torch.backends.cudnn.is_available() else "")
        + ")",
        f"torchaudio {torchaudio.__version__}",
        f"GPUs visible: {torch.cuda.device_count() if torch.cuda.is_available() else 0}",
    ]
    return "\n".join(lines)
