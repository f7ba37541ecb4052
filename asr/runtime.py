"""Where the code runs: the process's rank and device, its precision, and the library versions.

Training and evaluation both start here. Under torchrun the process joins the job's process
group (NCCL on GPUs, gloo on the CPU); a single process needs no group at all.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank in the job, its device, and its autocast precision."""

    rank: int
    world_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None
    """bf16 on CUDA by default; None runs fp32 (the CPU default)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward passes' autocast region (a no-op in fp32)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype is not None)

    def log(self, message: str) -> None:
        """Print on rank 0 only: one line per event, however many ranks."""
        if self.is_main:
            print(message, flush=True)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when it is true on any (one all-reduce; call on every rank)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (one object all-gather; call on every rank)."""
        if self.world_size == 1:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


def wants_cuda(device: str) -> bool:
    """Whether ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``) runs on a GPU; a GPU asked
    for where none is visible is a ValueError, a sentence rather than a CUDA traceback."""
    if device == "auto":
        return torch.cuda.is_available()
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device is visible to this process "
                         "(torch.cuda.is_available() is False); use cpu or auto")
    return device.startswith("cuda")


def setup_runtime(device: str = "auto", precision: str = "auto", *, timeout_s: float = 300.0) -> Runtime:
    """Join the torchrun process group when there is one, and pick the device and precision.

    ``device``: ``auto`` (CUDA when visible), ``cpu`` or ``cuda``; ``precision``: ``auto`` (bf16
    on CUDA, fp32 on the CPU), ``bf16`` or ``fp32``. ``timeout_s``: how long a collective waits
    for the other ranks before it fails (torch's own default is 10 to 30 minutes).
    """
    use_cuda = wants_cuda(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if use_cuda:
        local_rank = int(device.split(":")[1]) if ":" in device else int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        where = torch.device("cuda", local_rank)
    else:
        where = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=where if use_cuda else None,
                                timeout=datetime.timedelta(seconds=timeout_s))
    bf16 = precision == "bf16" or (precision == "auto" and use_cuda)
    return Runtime(rank, world_size, where, torch.bfloat16 if bf16 else None)


def version_report() -> str:
    """The versions a bug report needs: this package, Python, torch, torchaudio, CUDA, cuDNN."""
    import torchaudio

    import asr

    cuda = torch.version.cuda or "none (CPU build)"
    cudnn = f", cuDNN {torch.backends.cudnn.version()}" if torch.backends.cudnn.is_available() else ""
    return "\n".join([
        f"asr {asr.__version__}",
        f"python {platform.python_version()} ({platform.system()} {platform.machine()})",
        f"torch {torch.__version__} (CUDA {cuda}{cudnn})",
        f"torchaudio {torchaudio.__version__}",
        f"GPUs visible: {torch.cuda.device_count() if torch.cuda.is_available() else 0}",
    ])
