"""Compiled encoder blocks and a sync-free forward: same outputs, same LayerDrop draws."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from asr.config import ModelConfig
from asr.ema import EMATeacher
from asr.model import build_model

N_MELS, VOCAB = 16, 29

pytestmark = pytest.mark.usefixtures("one_thread")


def make(seed: int = 0, **overrides):
    base = ModelConfig(d_model=32, num_layers=6, num_heads=4, ffn_dim=64, dropout=0.0,
                       attention_dropout=0.0, pos_conv_kernel=8, pos_conv_groups=4, conv_kernel=5)
    torch.manual_seed(seed)
    return build_model(dataclasses.replace(base, **overrides), N_MELS, VOCAB)


def ragged_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(lengths), max(lengths), N_MELS, generator=g), torch.tensor(lengths)


class GraphCounter:
    """A torch.compile backend that runs the traced graph eagerly and counts the graphs."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return gm.forward


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_forward_and_backward_make_no_host_sync(monkeypatch):
    """A host read of a device tensor stalls the GPU pipeline; none may happen in the step."""
    model = make(layerdrop=0.3, dropout=0.1, attention_dropout=0.1, conv_module=True).train()
    feats, lengths = ragged_batch([50, 31, 4])

    def refuse(self, *args, **kwargs):
        raise AssertionError("host sync in the forward pass")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    model.set_layerdrop_seed(1)
    log_probs, out_lengths = model(feats, lengths)
    log_probs.sum().backward()
    monkeypatch.undo()
    assert out_lengths.tolist() == [17, 11, 2]


def test_padded_false_keeps_the_mask_on_the_cpu_bit_for_bit():
    model = make().eval()
    feats, lengths = ragged_batch([40, 40])
    with torch.no_grad():
        assert torch.equal(model(feats, lengths, padded=False)[0], model(feats, lengths)[0])


@pytest.mark.parametrize("conv_module", [False, True])
def test_compiled_blocks_give_the_uncompiled_outputs_with_one_graph_for_all(conv_module):
    model = make(conv_module=conv_module).eval()
    reference = copy.deepcopy(model)
    counter = GraphCounter()
    model.compile_blocks(backend=counter)
    with torch.no_grad():
        for lengths in ([40, 33, 5], [61, 2]):  # a second shape: dynamic, no new graph
            feats, lengths = ragged_batch(lengths)
            torch.testing.assert_close(model(feats, lengths)[0], reference(feats, lengths)[0],
                                       atol=1e-5, rtol=1e-5)
    assert counter.graphs == 1
    assert model.state_dict().keys() == reference.state_dict().keys()


def test_compiled_training_keeps_layerdrop_draws_and_gradients():
    """The skip decision stays in eager Python: the same seed skips the same blocks."""
    model = make(layerdrop=0.5).train()
    reference = copy.deepcopy(model)
    model.compile_blocks(backend="aot_eager")
    ran = {"compiled": [], "eager": []}
    for key, net in (("compiled", model), ("eager", reference)):
        run_block = net.encoder._block
        net.encoder._block = lambda layer, *a, net=net, key=key, run_block=run_block: (
            ran[key].append(list(net.encoder.layers).index(layer)) or run_block(layer, *a))
    feats, lengths = ragged_batch([40, 33, 5])
    for step in range(4):
        outs = []
        for net in (model, reference):
            net.set_layerdrop_seed(step)
            log_probs, _ = net(feats, lengths)
            log_probs.sum().backward()
            outs.append(log_probs)
        torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    assert ran["compiled"] == ran["eager"] and len(ran["eager"]) < 6 * 4  # some blocks skipped
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_a_failing_compiler_warns_once_and_runs_the_blocks_eagerly():
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    model = make().eval()
    reference = copy.deepcopy(model)
    model.compile_blocks(backend=broken)
    feats, lengths = ragged_batch([30, 12])
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="running them eagerly.*no compiler here"):
        out = model(feats, lengths)[0]
    assert torch.equal(out, reference(feats, lengths)[0])
    assert model.encoder._compiled_block is None


def test_the_teacher_compiles_too_and_does_not_read_the_student():
    """The EMA teacher's deep copy of a compiled student runs its own weights (eval, no_grad)."""
    student = make(layerdrop=0.3)
    student.compile_blocks(backend="eager")
    teacher = EMATeacher(student)
    teacher.module.compile_blocks(backend="eager")
    feats, lengths = ragged_batch([30, 12])
    expected = copy.deepcopy(teacher.module)
    expected.encoder._compiled_block = None
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        out, _ = teacher(feats, lengths)
        torch.testing.assert_close(out, expected(feats, lengths)[0], atol=1e-5, rtol=1e-5)
    assert not out.requires_grad


def test_ctc_loss_is_the_same_compiled():
    model = make(dropout=0.1, attention_dropout=0.1, layerdrop=0.2).train()
    reference = copy.deepcopy(model)
    model.compile_blocks(backend="eager")
    feats, lengths = ragged_batch([60, 45])
    targets, target_lengths = torch.tensor([[3, 4, 1, 5, 6], [7, 8, 9, 0, 0]]), torch.tensor([5, 3])
    losses = []
    for net in (model, reference):
        torch.manual_seed(5)  # the same dropout masks
        net.set_layerdrop_seed(9)
        log_probs, out_lengths = net(feats, lengths)
        losses.append(F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths))
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to observe host synchronization")
def test_cuda_training_step_makes_no_host_sync_and_padded_false_drops_only_the_mask():
    model = make(layerdrop=0.3, dropout=0.1, attention_dropout=0.1, conv_module=True).cuda().train()
    feats, lengths = ragged_batch([50, 31, 4])
    feats, lengths = feats.cuda(), lengths.cuda()
    model.set_layerdrop_seed(1)
    model(feats, lengths)[0].sum().backward()  # warm-up: cuFFT plans, cuBLAS handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            log_probs, _ = model(feats, lengths)
        log_probs.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    full = torch.full_like(lengths, feats.shape[1])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(feats, full, padded=False)[0], model(feats, full)[0],
                                   atol=1e-4, rtol=1e-4)
