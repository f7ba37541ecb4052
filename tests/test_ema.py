"""The EMA teacher: teacher <- rho * teacher + (1 - rho) * student, paired by name, fp32, unwrapped."""

import pytest
import torch
from torch import nn

from asr.ema import EMATeacher, strip_wrapper_prefixes, unwrap_model
from asr.scaling import scale_ema


class Net(nn.Module):
    """Two same-shape weights registered in either order, a float buffer and a counter."""

    def __init__(self, swap: bool = False) -> None:
        super().__init__()
        first, second = ("b", "a") if swap else ("a", "b")
        setattr(self, first, nn.Parameter(torch.randn(4, 3)))
        setattr(self, second, nn.Parameter(torch.randn(4, 3)))
        self.norm = nn.BatchNorm1d(3)  # running_mean/var (float), num_batches_tracked (int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x @ self.a.T @ self.b)


def perturbed(model: nn.Module, seed: int) -> nn.Module:
    """The same model with every float tensor moved and the counter advanced."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator).to(tensor))
            else:
                tensor.add_(7)
    return model


def expected_update(teacher_state: dict, student: nn.Module, rho: float) -> dict:
    """The reference formula, tensor by tensor and by name, in float64."""
    student_state = unwrap_model(student).state_dict()
    return {name: (rho * value.double() + (1 - rho) * student_state[name].double()
                   if value.is_floating_point() else student_state[name].clone())
            for name, value in teacher_state.items()}


def assert_state_close(got: dict, expected: dict, atol: float = 1e-6) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name].double().cpu(), value.double().cpu(), atol=atol, rtol=0, msg=name)


def test_update_follows_the_formula_by_name_and_copies_integer_buffers():
    torch.manual_seed(0)
    student = Net()
    teacher = EMATeacher(student)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    perturbed(student, seed=1)

    teacher.update(student, 0.9)

    assert_state_close(teacher.state_dict(), expected_update(before, student, 0.9))
    assert teacher.state_dict()["norm.num_batches_tracked"].item() == 7


def test_update_pairs_tensors_by_name_not_by_registration_order():
    torch.manual_seed(0)
    teacher = EMATeacher(Net(swap=False))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = Net(swap=True)  # parameters() yields b before a
    assert [n for n, _ in student.named_parameters()][:2] == ["b", "a"]

    teacher.update(student, 0.5)

    assert_state_close(teacher.state_dict(), expected_update(before, student, 0.5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_student_keeps_an_fp32_teacher(dtype):
    torch.manual_seed(0)
    student = Net().to(dtype)
    teacher = EMATeacher(student)
    assert all(t.dtype == torch.float32 for t in teacher.module.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    perturbed(student, seed=1)

    teacher.update(student, 0.9999)  # a step of 1e-4 of the gap: lost in bf16, kept in fp32

    assert_state_close(teacher.state_dict(), expected_update(before, student, 0.9999))
    moved = teacher.state_dict()["a"].double() - before["a"].double()
    assert moved.abs().min() > 0


def test_tensor_rho_gives_the_same_update_as_float_rho():
    torch.manual_seed(0)
    student = Net()
    by_float, by_tensor = EMATeacher(student), EMATeacher(student)
    perturbed(student, seed=1)
    by_float.update(student, 0.97)
    by_tensor.update(student, torch.tensor(0.97, dtype=torch.float64))
    assert_state_close(by_tensor.state_dict(), by_float.state_dict())


def test_kappa_updates_towards_a_fixed_student_equal_one_update_at_rho_to_kappa():
    torch.manual_seed(0)
    student = Net()
    many, one = EMATeacher(student), EMATeacher(student)
    perturbed(student, seed=1)
    for _ in range(8):
        many.update(student, 0.99)
    one.update(student, scale_ema(0.99, 8))
    assert_state_close(many.state_dict(), one.state_dict(), atol=1e-5)


def test_teacher_shares_no_storage_and_takes_no_gradients():
    student = Net()
    teacher = EMATeacher(student)
    def storage(module: nn.Module) -> set[int]:
        return {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}

    assert not storage(student) & storage(teacher.module)
    assert not any(p.requires_grad for p in teacher.module.parameters())
    assert not teacher.module.training

    snapshot = {k: v.clone() for k, v in teacher.state_dict().items()}
    perturbed(student, seed=1)  # moving the student does not move the teacher
    assert_state_close(teacher.state_dict(), snapshot, atol=0)

    x = torch.randn(5, 3, requires_grad=True)
    out = teacher(x)  # delegates to the averaged model, outside autograd
    assert not out.requires_grad
    torch.testing.assert_close(out, teacher.module(x).detach())


def test_update_under_dataparallel_and_compile_wrappers():
    torch.manual_seed(0)
    plain = Net()
    wrapped = nn.DataParallel(torch.compile(Net()))  # moves the model to cuda:0 where there is one
    unwrap_model(wrapped).load_state_dict(plain.state_dict())
    assert unwrap_model(wrapped) is wrapped.module._orig_mod

    from_plain, from_wrapped = EMATeacher(plain), EMATeacher(wrapped)
    assert from_wrapped.state_dict().keys() == plain.state_dict().keys()  # no module./_orig_mod.
    perturbed(plain, seed=1)
    perturbed(unwrap_model(wrapped), seed=1)
    from_plain.update(plain, 0.9)
    from_wrapped.update(wrapped, 0.9)
    assert_state_close(from_wrapped.state_dict(), from_plain.state_dict())


def test_state_dict_round_trip_accepts_wrapper_prefixes():
    teacher = EMATeacher(perturbed(Net(), seed=1))
    fresh = EMATeacher(Net())
    fresh.load_state_dict(teacher.state_dict())
    assert_state_close(fresh.state_dict(), teacher.state_dict(), atol=0)

    prefixed = {f"module._orig_mod.{k}": v for k, v in teacher.state_dict().items()}
    assert strip_wrapper_prefixes(prefixed).keys() == teacher.state_dict().keys()
    partly = {"module.weight": torch.zeros(1), "head.bias": torch.zeros(1)}  # a submodule named module
    assert strip_wrapper_prefixes(partly).keys() == partly.keys()
    other = EMATeacher(Net())
    other.load_state_dict(prefixed)
    assert_state_close(other.state_dict(), teacher.state_dict(), atol=0)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("a"), r"missing keys \['a'\]"),
        (lambda s: s.update(extra=torch.zeros(1)), r"unexpected keys \['extra'\]"),
        (lambda s: s.update(a=torch.zeros(5, 3)), r"does not fit the model.*size mismatch for a"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_load_state_dict_is_strict_with_a_clear_error(edit, message):
    teacher = EMATeacher(Net())
    state = dict(teacher.state_dict())
    edit(state)
    with pytest.raises(ValueError, match=message):
        teacher.load_state_dict(state)


def test_update_from_another_architecture_is_refused():
    teacher = EMATeacher(Net())
    with pytest.raises(ValueError, match=r"student does not match the EMA teacher: missing \['a', 'b'"):
        teacher.update(nn.Sequential(nn.Linear(3, 3)), 0.9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to observe host synchronization")
def test_update_with_a_device_rho_does_not_synchronize():
    student = Net().cuda().to(torch.bfloat16)
    teacher = EMATeacher(student)
    rho = torch.tensor(0.999, device="cuda")
    teacher.update(student, rho)  # the first update compiles the fused kernel (which may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            teacher.update(student, rho)
            rho = rho * 1.0  # a rho computed on the device, as a schedule would
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_updates_reuse_the_lists_built_once_and_rebind_for_another_student(monkeypatch):
    """No walk over the module tree per step: named_parameters is called on the first update
    from a student only (and again for a new student, checked by name as before)."""
    torch.manual_seed(0)
    student = Net()
    teacher = EMATeacher(student)
    teacher.update(student, 0.9)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    perturbed(student, seed=1)
    walks = []
    original = nn.Module.named_parameters
    monkeypatch.setattr(nn.Module, "named_parameters", lambda self, *a, **k: walks.append(1) or original(self, *a, **k))
    teacher.update(student, torch.tensor(0.9))
    assert walks == []
    assert_state_close(teacher.state_dict(), expected_update(before, student, 0.9))

    other = perturbed(Net(), seed=2)
    other.load_state_dict(student.state_dict())
    perturbed(other, seed=3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.update(other, 0.5)
    assert walks  # bound to the new student by name
    assert_state_close(teacher.state_dict(), expected_update(before, other, 0.5))


def test_load_state_dict_rebuilds_the_lists_so_updates_reach_the_loaded_weights():
    torch.manual_seed(0)
    student = Net()
    teacher = EMATeacher(student)
    teacher.update(student, 0.9)
    saved = perturbed(Net(), seed=4).state_dict()
    teacher.load_state_dict(saved)
    teacher.update(student, 0.5)
    assert_state_close(teacher.state_dict(), expected_update(saved, student, 0.5))


def test_a_failing_update_compiler_warns_once_and_gives_the_eager_result(monkeypatch):
    from torch._dynamo.exc import TorchDynamoException

    def broken_compile(fn, **_):
        def run(*args):
            raise TorchDynamoException("no compiler here")
        return run

    torch.manual_seed(0)
    student = Net()
    fused, eager = EMATeacher(student, compile_update=True), EMATeacher(student, compile_update=False)
    perturbed(student, seed=1)
    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(RuntimeWarning, match="EMA update failed, running it eagerly"):
        fused.update(student, torch.tensor(0.9))
    fused.update(student, torch.tensor(0.9))  # no second warning: eager from now on
    eager.update(student, torch.tensor(0.9))
    eager.update(student, torch.tensor(0.9))
    assert_state_close(fused.state_dict(), eager.state_dict(), atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused update is compiled on CUDA")
def test_the_fused_cuda_update_matches_the_eager_formula():
    torch.manual_seed(0)
    student = Net().cuda()
    fused, eager = EMATeacher(student), EMATeacher(student, compile_update=False)
    for seed in range(3):
        perturbed(student, seed=seed)
        rho = torch.tensor(0.99, device="cuda")
        fused.update(student, rho)
        eager.update(student, rho)
    assert_state_close(fused.state_dict(), eager.state_dict(), atol=1e-6)
