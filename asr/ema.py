"""The EMA teacher: an exponential moving average of the student's weights.

The teacher averages the student over its recent optimizer steps, which cancels much of the
step-to-step noise of SGD/Adam (Polyak-Ruppert averaging) and changes slowly. That makes it a
better and steadier labeller than the student itself: pseudo-labels from a slowly moving
teacher do not chase the student's own mistakes, which is what keeps momentum pseudo-labeling
(Higuchi et al. 2021) and slimIPL-style training from collapsing.

The update is ``teacher <- rho * teacher + (1 - rho) * student`` once per *optimizer step*.
rho is a momentum per step; the EMA Scaling Rule (rho -> rho^kappa, :mod:`asr.scaling`) is
derived for exactly that cadence. Updating per micro-batch would apply it accum_steps times
per step, towards a student that has not moved: a different, batch-size dependent average.

Design (after timm's ``ModelEmaV3``): the shadow is an fp32 deep copy of the *unwrapped*
student, in eval mode, with gradients off and never wrapped in DDP (every rank holds the same
teacher because every rank applies the same all-reduced update). Tensors are paired by name,
not position, so a student whose modules are registered in another order fails loudly instead
of averaging the wrong weights together.

The update runs over tensor lists built once (the shadow's at construction and on
``load_state_dict``, the student's on the first update from it), so a step costs no walk over
the module tree. With a Python-float rho it is one fused ``torch._foreach_lerp_``. A rho held
in a device tensor (the trainer's ``where(skipped, 1, rho)``, no host sync) cannot go to lerp,
whose weight is a host scalar: on the CPU it is ``rho * t + (1 - rho) * s`` in two fused
multi-tensor kernels; on CUDA the same formula is compiled once into one fused kernel that
reads teacher and student and writes the teacher once, the update's memory-bandwidth floor.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP/DataParallel (``.module``) and torch.compile (``._orig_mod``)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def strip_wrapper_prefixes(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """State-dict keys without the ``module.`` / ``_orig_mod.`` prefixes that wrappers add.

    A prefix is stripped only when every key has it, so a submodule that happens to be called
    ``module`` keeps its name.
    """
    out = dict(state)
    stripped = True
    while out and stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in out):
                out = {key[len(prefix):]: value for key, value in out.items()}
                stripped = True
    return out


class EMATeacher:
    """fp32 EMA of a student, updated once per optimizer step; call it like the student.

    Create it once the student is on its device (the shadow stays there) and initialised or
    resumed; a DDP or torch.compile wrapper around the student is looked through.
    ``compile_update`` fuses the device-rho update into one kernel with ``torch.compile``;
    ``None`` means on CUDA only, so CPU updates stay bit-identical to the eager formula.
    """

    def __init__(self, student: nn.Module, compile_update: bool | None = None) -> None:
        student = unwrap_model(student)
        self._shadow = copy.deepcopy(student).eval().requires_grad_(False)
        for tensor in (*self._shadow.parameters(), *self._shadow.buffers()):
            if tensor.is_floating_point():  # fp32 at least: bf16 cannot hold 1 - rho ~ 1e-4 steps
                tensor.data = tensor.data.to(torch.promote_types(tensor.dtype, torch.float32))
        self._compile_update = compile_update
        self._fused_update: Callable[..., None] | None = None
        self._build_lists()

    def _build_lists(self) -> None:
        """The shadow's tensors in update order; the student's are bound again on next use."""
        float_names, other_names = [], []
        shadow = _named_tensors(self._shadow)
        for name, tensor in shadow.items():
            (float_names if tensor.is_floating_point() else other_names).append(name)
        self._float_names = tuple(float_names)
        self._other_names = tuple(other_names)
        self._targets = [shadow[name] for name in self._float_names]
        self._other_targets = [shadow[name] for name in self._other_names]
        self._student_ref: weakref.ref[nn.Module] | None = None
        self._values: list[Tensor] = []
        self._other_values: list[Tensor] = []
        self._cast: list[bool] = []

    def _bind(self, student: nn.Module) -> None:
        """Pair the student's tensors with the shadow's by name, once per student module.

        A student whose parameters are later replaced by new tensor objects (not updated in
        place, e.g. ``load_state_dict(assign=True)``) needs a new teacher or a ``load_state_dict``.
        """
        module = unwrap_model(student)
        if self._student_ref is not None and self._student_ref() is module:
            return
        source = self._student_tensors(module)
        self._values = [source[name] for name in self._float_names]
        self._other_values = [source[name] for name in self._other_names]
        self._cast = [v.dtype != t.dtype for v, t in zip(self._values, self._targets, strict=True)]
        self._student_ref = weakref.ref(module)

    @property
    def module(self) -> nn.Module:
        """The averaged model (plain ``nn.Module``; save or decode with it)."""
        return self._shadow

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        """The teacher's forward pass, without autograd."""
        return self._shadow(*args, **kwargs)

    __call__ = forward

    @torch.no_grad()
    def update(self, student: nn.Module, rho: float | Tensor) -> None:
        """``teacher <- rho * teacher + (1 - rho) * student``; once per optimizer step.

        ``rho`` may be a 0-dim tensor on the teacher's device: a rho that changes every step
        (a progressive stage, a warm-up) then costs no host sync and no recompilation.
        Non-float buffers (counters) are copied.
        """
        self._bind(student)
        targets = self._targets
        values = self._values
        if any(self._cast):  # a bf16 student: its copies in the shadow's dtype, every step
            values = [v.to(t.dtype) if cast else v for v, t, cast in zip(values, targets, self._cast, strict=True)]
        if targets and isinstance(rho, Tensor):
            # _foreach_lerp_ takes its weight as a host Scalar and would read a device tensor
            # back (a sync); the Tensor overloads of mul/add keep the whole update on device.
            rho = rho.to(device=targets[0].device, dtype=torch.float32)
            if self._compile_update or (self._compile_update is None and rho.is_cuda):
                self._update_fused(targets, values, rho)
            else:
                _update_by_tensor(targets, values, rho)
        elif targets:
            torch._foreach_lerp_(targets, values, 1.0 - rho)
        if self._other_targets:
            torch._foreach_copy_(self._other_targets, self._other_values)

    def _update_fused(self, targets: list[Tensor], values: list[Tensor], rho: Tensor) -> None:
        """``_update_by_tensor`` compiled into one multi-tensor kernel; eager if that fails."""
        if self._fused_update is None:
            self._fused_update = torch.compile(_update_by_tensor, dynamic=False)
        try:
            self._fused_update(targets, values, rho)
        except Exception as err:
            from torch._dynamo.exc import TorchDynamoException  # loaded by torch.compile already
            from torch._inductor.exc import InductorError

            if not isinstance(err, (TorchDynamoException, InductorError)):
                raise
            reason = " ".join(str(err).split())[:500]
            warnings.warn(f"torch.compile of the EMA update failed, running it eagerly: "
                          f"{type(err).__name__}: {reason}", RuntimeWarning, stacklevel=3)
            self._compile_update = False
            _update_by_tensor(targets, values, rho)

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights, keyed like the plain student's ``state_dict``."""
        return self._shadow.state_dict()

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load averaged weights (wrapper prefixes are stripped); every key must match."""
        state = strip_wrapper_prefixes(state)
        expected = set(self._shadow.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"EMA teacher state_dict does not match the model: missing keys {missing[:5]}"
                           f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                           f"{' ...' if len(unexpected) > 5 else ''}")
        try:
            self._shadow.load_state_dict(state, strict=True)
        except RuntimeError as err:  # shape mismatch: a checkpoint of another model size
            detail = " ".join(str(err).split())
            raise ValueError(f"EMA teacher state_dict does not fit the model: {detail}") from None
        self._build_lists()

    def _student_tensors(self, student: nn.Module) -> dict[str, Tensor]:
        source = _named_tensors(student)
        names = (*self._float_names, *self._other_names)
        if len(source) != len(names) or any(name not in source for name in names):
            missing = sorted(set(names) - set(source))
            extra = sorted(set(source) - set(names))
            raise ValueError(f"student does not match the EMA teacher: missing {missing[:5]}, "
                             f"unexpected {extra[:5]} (was the teacher built from this model?)")
        return source


def _update_by_tensor(targets: list[Tensor], values: list[Tensor], rho: Tensor) -> None:
    """``t <- t * rho + s * (1 - rho)`` with rho a 0-dim device tensor (no host read)."""
    torch._foreach_mul_(targets, rho)
    torch._foreach_add_(targets, torch._foreach_mul(values, 1 - rho))


def _named_tensors(module: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers by name (non-persistent buffers included: they are model state)."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}
