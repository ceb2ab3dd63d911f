"""Works where models run, and refuses bad input clearly (SE, ECA and CBAM, every
CPU backend): autocast, torch.export, torch.compile of a converted timm model
(fullgraph, dynamic batch), inference mode, torch.jit.trace (and torch.jit.script
refused, saying what to do), torch.func transforms, DDP, deterministic mode, non-contiguous views,
zero-size dimensions, NaN / Inf, large fp16 / bf16 magnitudes, and bad arguments."""
import copy
import os
import tempfile

import pytest
import torch
from torch import nn

import fused_attn

from .utils import TOL, ZERO_SIZE_SHAPES, assert_close, check_zero_size, cpu_backends

BACKENDS = [b for b in cpu_backends()]


@pytest.fixture(params=BACKENDS)
def backend(request):
    with fused_attn.use_backend(request.param):
        yield request.param


def _block(C=32, memory_format=torch.contiguous_format):
    """conv → fused SE → conv → fused ECA → fused CBAM: the pattern of a real network."""
    torch.manual_seed(0)
    block = nn.Sequential(
        nn.Conv2d(8, C, 3, padding=1), nn.ReLU(),
        fused_attn.nn.SqueezeExcite(C, rd_channels=8, act="silu", pool="avgmax"),
        nn.Conv2d(C, C, 1),
        fused_attn.nn.EfficientChannelAttention(C, padding="circular", bias=True),
        fused_attn.nn.CBAM(C, rd_ratio=1 / 8, spatial_kernel_size=3, mlp_bias=True),
    )
    with torch.no_grad():   # BatchNorm statistics that are not the identity
        bn = block[5].part("bn")
        bn.running_mean.fill_(0.2)
        bn.running_var.fill_(1.5)
        bn.weight.fill_(0.8)
        bn.bias.fill_(0.1)
    return block.to(memory_format=memory_format)


def _eager_twin(block):
    """The same block with eager reference modules (same parameters)."""
    se, eca = block[2], block[4]

    class EagerSE(nn.Module):
        def forward(self, x):
            return fused_attn.reference.squeeze_excitation(
                x, se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias, act=se.act, gate=se.gate, pool=se.pool)

    class EagerECA(nn.Module):
        def forward(self, x):
            return fused_attn.reference.efficient_channel_attention(x, eca.conv.weight, eca.conv.bias,
                                                                    padding=eca.padding, gate=eca.gate)

    cbam = block[5]

    class EagerCBAM(nn.Module):
        def forward(self, x):
            fc1, fc2, conv, bn = (cbam.part(r) for r in ("fc1", "fc2", "conv", "bn"))
            w = [fc1.weight, fc1.bias, fc2.weight, fc2.bias, conv.weight]
            low = (torch.bfloat16, torch.float16)
            if torch.is_autocast_enabled(x.device.type) and x.dtype in low:   # what eager's convs do
                w = [t.to(x.dtype) for t in w]
            return fused_attn.reference.cbam(
                x, *w, bn_weight=bn.weight, bn_bias=bn.bias,
                bn_running_mean=bn.running_mean, bn_running_var=bn.running_var, bn_training=bn.training,
                bn_eps=bn.eps, act=cbam.act, gate=cbam.gate, pool_order=cbam.pool_order)

    return nn.Sequential(block[0], block[1], EagerSE(), block[3], EagerECA(), EagerCBAM())


# ---- autocast ------------------------------------------------------------------

def autocast_block_outputs(backend, device, dtype, memory_format):
    """conv → SE → conv → ECA → CBAM (``_block``) on ``backend`` and its eager
    twin, both under ``torch.autocast(device, dtype)``: the convs hand the
    blocks low-precision activations while their parameters stay fp32. Checks
    that both outputs have the autocast dtype and that the fp32 parameters get
    fp32 gradients close to eager's; returns (y, y_ref)."""
    block = _block(memory_format=memory_format).to(device)
    eager = _eager_twin(block)
    x = torch.randn(2, 8, 9, 7, device=device).to(memory_format=memory_format)
    with fused_attn.use_backend(backend), torch.autocast(device, dtype=dtype):
        y = block(x)
    with torch.autocast(device, dtype=dtype):
        y_ref = eager(x)
    assert y.dtype == y_ref.dtype == dtype
    params = list(block.parameters())
    grads = torch.autograd.grad(y.float().sum(), params)
    grads_ref = torch.autograd.grad(y_ref.float().sum(), params)
    # Relative norms: both sides round to low precision along the way, and
    # where a rounding creates or breaks a tie in CBAM's max pools one
    # element's gradient moves by a tie's share; the gradient as a whole does not.
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert g.dtype == torch.float32
        assert (g - g_ref).norm() <= 5e-2 * g_ref.norm() + 1e-6
    return y, y_ref


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
def test_autocast_cpu_bf16_takes_and_returns_what_eager_does(backend, memory_format):
    """Under autocast the fused ops accept bf16 activations with fp32
    parameters (as eager does), return bf16 like eager, and give the fp32
    parameters fp32 gradients."""
    y, y_ref = autocast_block_outputs(backend, "cpu", torch.bfloat16, memory_format)
    assert_close(y.float(), y_ref.float(), torch.bfloat16)


def test_mismatched_dtypes_outside_autocast_are_refused():
    x = torch.randn(2, 8, 4, 4, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="fc1_weight has dtype torch.float32 but x has dtype torch.bfloat16"):
        fused_attn.squeeze_excitation(x, torch.randn(2, 8), None, torch.randn(8, 2), None)


# ---- torch.export and torch.compile ----------------------------------------------

@pytest.mark.skipif(not fused_attn.HAS_C, reason="export traces the compiled ops")
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
def test_export_runs_and_keeps_the_ops(memory_format):
    block = _block(memory_format=memory_format).eval()
    x = torch.randn(2, 8, 9, 7).to(memory_format=memory_format)
    with fused_attn.use_backend("cpu"):
        exported = torch.export.export(block, (x,))
        targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
        assert any("fused_attn.se_forward" in t for t in targets), targets
        assert any("fused_attn.eca_forward" in t for t in targets), targets
        assert any("fused_attn.cbam_forward" in t for t in targets), targets
        x2 = torch.randn(2, 8, 9, 7).to(memory_format=memory_format)
        y = exported.module()(x2)
    assert y.is_contiguous(memory_format=memory_format)
    assert_close(y, _eager_twin(block)(x2), torch.float32)


def _export_dynamic(block, memory_format):
    """block exported with a dynamic batch, height and width (from 2: export
    specializes sizes 0 and 1)."""
    x = torch.randn(3, 8, 9, 7).to(memory_format=memory_format)
    dims = {0: torch.export.Dim("n", min=2), 2: torch.export.Dim("h", min=2), 3: torch.export.Dim("w", min=2)}
    with fused_attn.use_backend("cpu"):
        return torch.export.export(block, (x,), dynamic_shapes={"input": dims})


# Shapes other than the one exported: the fake kernels' output shapes and
# layouts must hold for symbolic sizes.
_DYNAMIC_SHAPES = [(2, 8, 5, 6), (4, 8, 11, 3), (2, 8, 16, 16)]


@pytest.mark.skipif(not fused_attn.HAS_C, reason="export traces the compiled ops")
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
def test_export_with_dynamic_batch_and_size(memory_format):
    block = _block(memory_format=memory_format).eval()
    exported = _export_dynamic(block, memory_format)
    for shape in _DYNAMIC_SHAPES:
        x = torch.randn(shape).to(memory_format=memory_format)
        with fused_attn.use_backend("cpu"):
            y = exported.module()(x)
        assert y.is_contiguous(memory_format=memory_format)
        assert_close(y, _eager_twin(block)(x), torch.float32)


@pytest.mark.skipif(not fused_attn.HAS_C, reason="export traces the compiled ops")
def test_exported_program_runs_under_aot_inductor(tmp_path):
    """Deployment: an exported block (dynamic batch and size) compiled ahead
    of time by AOTInductor into a package (C++ compiled here, ~30 s), loaded
    back and run at several shapes. The package calls the custom ops through
    the dispatcher, by their schemas; outputs as the eager reference's, the
    layout kept."""
    block = _block(memory_format=torch.channels_last).eval()
    exported = _export_dynamic(block, torch.channels_last)
    package = torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp_path / "block.pt2"))
    runner = torch._inductor.aoti_load_package(package)
    for shape in _DYNAMIC_SHAPES:
        x = torch.randn(shape).to(memory_format=torch.channels_last)
        y = runner(x)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert_close(y, _eager_twin(block)(x), torch.float32)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_export_gives_standard_operators(dynamo, tmp_path):
    """torch.onnx.export of fused modules (either exporter): ONNX has no
    operator for the fused ops, so under an export they run as the
    reference's ATen ops (_backends.in_onnx_export), which become standard
    ONNX; onnxruntime's output equals the eager reference's."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    block = _block().eval()
    x = torch.randn(2, 8, 9, 7)
    path = str(tmp_path / "block.onnx")
    if dynamo:
        torch.onnx.export(block, (x,), dynamo=True).save(path)
    else:
        torch.onnx.export(block, (x,), path, dynamo=False)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert {"ReduceMean", "ReduceMax", "Sigmoid", "Conv"} <= ops, ops
    assert all(node.domain in ("", "ai.onnx") for node in onnx.load(path).graph.node)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x2 = torch.randn(2, 8, 9, 7)
    y = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x2.numpy()})[0])
    assert_close(y, _eager_twin(block)(x2), torch.float32)


@pytest.mark.skipif(not fused_attn.HAS_C, reason="needs the compiled ops")
def test_compile_converted_timm_model_fullgraph_and_dynamic_batch():
    """A converted timm model traces whole (fullgraph=True: no graph break),
    does not recompile for new inputs of the same shape, takes a dynamic
    batch, and matches eager in outputs and gradients. aot_eager: dynamo and
    AOT autograd through the fake kernels, without code generation (the
    Inductor path is covered on a block in test_se_ops / test_eca)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("seresnet18", num_classes=10)
    model.layer4[1].se = timm.layers.EcaModule(512)     # an ECA block too
    model, report = fused_attn.convert(model.eval())
    assert report.total == 8
    torch._dynamo.reset()
    with fused_attn.use_backend("cpu"):
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        for step in range(2):
            x = torch.randn(2, 3, 32, 32).requires_grad_()
            with torch._dynamo.config.patch(error_on_recompile=step > 0):
                y = compiled(x)
            y_eager = model(x)
            assert_close(y, y_eager, torch.float32)
            g, = torch.autograd.grad(y.sum(), [x])
            g_eager, = torch.autograd.grad(y_eager.sum(), [x])
            assert_close(g, g_eager, torch.float32, grad=True)
        torch._dynamo.reset()
        dynamic = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
        for n in (2, 3, 5):
            x = torch.randn(n, 3, 32, 32)
            assert_close(dynamic(x), model(x), torch.float32)


# ---- inference mode and TorchScript ------------------------------------------------

@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_inference_mode_matches_eager(backend, train):
    """Under torch.inference_mode the block gives eager's outputs (inference
    tensors) and, in training mode, updates CBAM's running statistics as
    eager does, in place: the buffers stay normal tensors, so training
    outside inference mode still works after."""
    block = _block().train(train)
    twin_block = copy.deepcopy(block)
    eager = _eager_twin(twin_block)
    x = torch.randn(2, 8, 9, 7)
    with torch.inference_mode():
        y = block(x)
        y_ref = eager(x)
    assert y.is_inference()
    assert_close(y, y_ref, torch.float32)
    bn, bn_ref = block[5].part("bn"), twin_block[5].part("bn")
    for name in ("running_mean", "running_var"):
        got, want = getattr(bn, name), getattr(bn_ref, name)
        assert not got.is_inference(), name
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
    if train:
        assert not torch.equal(bn.running_mean, torch.full_like(bn.running_mean, 0.2))   # updated
    # as nn.BatchNorm2d counts (the functional twin counts nothing)
    assert not bn.num_batches_tracked.is_inference() and bn.num_batches_tracked.item() == int(train)
    loss = block(x).square().sum()     # outside inference mode: autograd through the same buffers
    loss.backward()
    assert all(p.grad is not None for p in block.parameters())


@pytest.mark.skipif(not fused_attn.HAS_C, reason="traces the compiled ops")
def test_jit_trace_keeps_the_ops():
    block = _block().eval()
    x = torch.randn(2, 8, 9, 7)
    with fused_attn.use_backend("cpu"):
        traced = torch.jit.trace(block, (x,), check_trace=False)
        kinds = {n.kind() for n in traced.inlined_graph.nodes()}
        for op in ("se_forward", "eca_forward", "cbam_forward"):
            assert f"fused_attn::{op}" in kinds, kinds
        x2 = torch.randn(2, 8, 9, 7)
        y = traced(x2)
    assert_close(y, _eager_twin(block)(x2), torch.float32)


@pytest.mark.parametrize("make", [
    lambda: fused_attn.nn.SqueezeExcite(16, rd_channels=4),
    lambda: fused_attn.nn.EfficientChannelAttention(16),
    lambda: fused_attn.nn.CBAM(16, rd_channels=4),
    lambda: fused_attn.nn.LightCBAM(16, rd_channels=4),
    lambda: nn.Sequential(nn.Conv2d(3, 16, 1), fused_attn.nn.SqueezeExcite(16, rd_channels=4)),
], ids=["se", "eca", "cbam", "lcbam", "nested"])
def test_jit_script_is_refused_saying_what_to_do(make):
    m = make()
    name = type(m[-1] if isinstance(m, nn.Sequential) else m).__name__
    with pytest.raises(RuntimeError, match=rf"torch.jit.script cannot compile fused_attn.nn.{name}:"
                                           r".*torch.export.*fused_attn.unconvert\(model, inplace=False\)"):
        torch.jit.script(m)


def test_jit_script_of_the_unconverted_model():
    """The way the refusal above points to: a converted timm model, unconverted,
    scripts and gives the converted model's outputs."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model, report = fused_attn.convert(timm.create_model("seresnet18", num_classes=10).eval())
    assert report.total == 8
    with pytest.raises(RuntimeError, match="torch.jit.script cannot compile fused_attn.nn.SqueezeExcite"):
        torch.jit.script(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        scripted = torch.jit.script(fused_attn.unconvert(model, inplace=False)[0])
        assert_close(scripted(x), y, torch.float32)


# ---- torch.func --------------------------------------------------------------------

def test_torch_func_transforms_run_the_reference(backend):
    """torch.func.grad, per-sample gradients (vmap of grad) and jacrev through
    the fused modules give what autograd gives outside the transforms.
    PyTorch refuses the compiled ops' C++ autograd under a transform, so the
    ops run the reference there, whatever backend is chosen."""
    from torch.func import functional_call, grad, jacrev, vmap

    F64 = torch.float64
    block = _block().eval().to(F64)
    names = [n for n, _ in block.named_parameters()]
    params = {n: p.detach() for n, p in block.named_parameters()}
    x = torch.randn(3, 8, 5, 4, dtype=F64)

    def loss(p, xs):
        return functional_call(block, p, (xs,)).square().sum()

    def autograd_grads(xs):
        return torch.autograd.grad(block(xs).square().sum(), list(block.parameters()))

    got = grad(loss)(params, x)
    for n, want in zip(names, autograd_grads(x), strict=True):
        assert_close(got[n], want, F64, grad=True)
    per_sample = vmap(grad(lambda p, xi: loss(p, xi[None])), in_dims=(None, 0))(params, x)
    for i in range(x.shape[0]):
        for n, want in zip(names, autograd_grads(x[i:i + 1]), strict=True):
            assert_close(per_sample[n][i], want, F64, grad=True)

    def pooled(xi):
        return block(xi[None]).sum((2, 3))[0]

    jac = jacrev(pooled)(x[0])
    assert_close(jac, torch.autograd.functional.jacobian(pooled, x[0]), F64, grad=True)

    torch._dynamo.reset()    # and compiled: the check is traced as the constant it is
    compiled = torch.compile(grad(loss), backend="aot_eager", fullgraph=True)(params, x)
    for n, want in zip(names, autograd_grads(x), strict=True):
        assert_close(compiled[n], want, F64, grad=True)


# ---- DDP -------------------------------------------------------------------------

def _ddp_model():
    """A small CNN with timm's SE and ECA blocks and BatchNorm, well
    conditioned enough (batch 8 per process) for fp32 training runs to stay
    comparable: whole timm networks at tiny batches amplify rounding-level
    differences chaotically (see test_convert.py)."""
    timm = __import__("timm")
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), timm.layers.SEModule(32, rd_channels=8),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(), timm.layers.EcaModule(64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 4))


def _ddp_worker(rank, world, init_file, out_dir, convert):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = _ddp_model()
    if convert:
        model, report = fused_attn.convert(model)
        assert report.total == 2, report
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(100 + rank)
    for _ in range(3):
        x = torch.randn(8, 3, 16, 16, generator=g)
        target = torch.randint(0, 4, (8,), generator=g)
        loss = torch.nn.functional.cross_entropy(ddp(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if rank == 0:
        torch.save(model.state_dict(), os.path.join(out_dir, f"{'fused' if convert else 'eager'}.pt"))
    dist.destroy_process_group()


@pytest.mark.skipif(not fused_attn.HAS_C, reason="needs the compiled ops")
def test_ddp_training_matches_unconverted():
    """Three SGD steps under DistributedDataParallel (gloo, 2 processes, CPU):
    the converted model ends where the unconverted one does."""
    pytest.importorskip("timm")
    import torch.multiprocessing as mp


    with tempfile.TemporaryDirectory() as tmp:
        for convert in (False, True):
            init_file = os.path.join(tmp, f"init-{convert}")
            mp.spawn(_ddp_worker, args=(2, init_file, tmp, convert), nprocs=2, join=True)
        eager = torch.load(os.path.join(tmp, "eager.pt"))
        fused = torch.load(os.path.join(tmp, "fused.pt"))
    assert list(eager) == list(fused)
    for k in eager:
        if eager[k].is_floating_point():
            torch.testing.assert_close(fused[k], eager[k], atol=1e-4, rtol=1e-4, msg=lambda m: f"{k}: {m}")


# ---- determinism, layouts, sizes, special values -----------------------------------

def _both_ops(x, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = x.shape[1]
    w1 = (torch.randn(max(1, C // 4), C, generator=g) * C ** -0.5).to(x.dtype)
    w2 = (torch.randn(C, max(1, C // 4), generator=g) * 0.5).to(x.dtype)
    b1 = torch.randn(max(1, C // 4), generator=g).to(x.dtype)
    wc = torch.randn(5, generator=g).to(x.dtype)
    ws = (torch.randn(1, 2, 3, 3, generator=g) * 0.2).to(x.dtype)
    bn = dict(bn_weight=torch.tensor([0.9]), bn_bias=torch.tensor([0.1]), bn_running_mean=torch.tensor([0.1]),
              bn_running_var=torch.tensor([1.2]))

    def run():
        return (fused_attn.squeeze_excitation(x, w1, b1, w2, None, act="silu", pool="avgmax"),
                fused_attn.efficient_channel_attention(x, wc, padding="circular"),
                fused_attn.cbam(x, w1, b1, w2, None, ws, **bn, act="silu"))

    outs = run()
    with fused_attn.use_backend("reference"):
        refs = run()
    return outs, refs


def test_deterministic_algorithms_mode(backend):
    """Under torch.use_deterministic_algorithms(True) the ops run (nothing
    they call is refused) and two runs agree bitwise."""
    x = torch.randn(3, 40, 9, 11).requires_grad_()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            outs, _ = _both_ops(x)
            runs.append([o.detach() for o in outs] + list(torch.autograd.grad(sum(o.sum() for o in outs), [x])))
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
def test_deterministic_mode_poisons_scratch(backend, memory_format):
    """In deterministic mode torch's at::empty fills new tensors with NaN
    (torch.utils.deterministic.fill_uninitialized_memory) and the C++ passes
    fill their own scratch (the channels_last partial sums, maxima and tie
    counts) likewise, so a pass that read scratch nobody wrote would put NaN
    in the outputs or gradients here. 2×40×24×20 in channels_last: 480 pixel
    rows, two segments of partials per sample."""
    assert torch.utils.deterministic.fill_uninitialized_memory
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 40, 24, 20, generator=g).contiguous(memory_format=memory_format).requires_grad_()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        outs, refs = _both_ops(x)
        for o, r in zip(outs, refs, strict=True):
            assert_close(o, r, torch.float32)
            dy = torch.randn(o.shape, generator=g)
            gx, = torch.autograd.grad(o, [x], dy)
            gx_ref, = torch.autograd.grad(r, [x], dy)
            assert_close(gx, gx_ref, torch.float32, grad=True)
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
def test_thread_count_does_not_change_bits(backend, memory_format):
    """Outputs, dx and every weight gradient are bitwise the same on 1 and 2
    threads. The threads split the MLP's weight rows (the C++ row products
    take them 3, 2 or 1 at a time, so a split regroups them) and the samples
    (the passes); each element must be formed in the same order either way.
    C = 130, rd = 32: a 2-way split of fc1's 32 rows leaves 5×3 + 1 per
    thread against 10×3 + 2 on one thread; N = 5 puts 10 rows against fc1."""
    if backend != "cpu":
        pytest.skip("the thread count is the C++ backend's (eager PyTorch's own reductions depend on it)")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 130, 7, 9, generator=g).contiguous(memory_format=memory_format).requires_grad_()
    w1 = (torch.randn(32, 130, generator=g) * 130 ** -0.5).requires_grad_()
    b1 = torch.randn(32, generator=g).requires_grad_()
    w2 = (torch.randn(130, 32, generator=g) * 0.5).requires_grad_()
    ws = (torch.randn(1, 2, 7, 7, generator=g) * 0.2).requires_grad_()
    bn = dict(bn_weight=torch.tensor([0.9]), bn_bias=torch.tensor([0.1]))  # batch statistics
    leaves = [x, w1, b1, w2, ws]

    def run():
        outs = (fused_attn.squeeze_excitation(x, w1, b1, w2, None, act="silu", pool="avgmax"),
                fused_attn.cbam(x, w1, b1, w2, None, ws, **bn, act="silu"))
        grads = torch.autograd.grad(sum((o * o).sum() for o in outs), leaves)
        return [o.detach() for o in outs] + list(grads)

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(previous)
    for i, (a, b) in enumerate(zip(one, two, strict=True)):
        assert torch.equal(a, b), f"result {i} differs between 1 and 2 threads"


def test_permuted_views_neither_nchw_nor_channels_last(backend):
    base = torch.randn(2, 9, 13, 24)
    x = base.permute(0, 2, 1, 3)[:, ::2]           # [2, 7, 9, 24]: C strided by 2·24, H by 24·... no dense layout
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    x = x.requires_grad_()
    outs, refs = _both_ops(x)
    for o, r in zip(outs, refs, strict=True):
        assert_close(o, r, torch.float32)
        g, = torch.autograd.grad(o.sum(), [x])
        g_ref, = torch.autograd.grad(r.sum(), [x])
        assert_close(g, g_ref, torch.float32, grad=True)


@pytest.mark.parametrize("shape", [(1, 1, 2, 1), (1, 3, 1, 4), (2, 1, 1, 1)], ids=str)
def test_size_one_dims_with_arbitrary_strides(backend, shape):
    """Found by the fuzz test (Triton read pixels through x.stride(3)): a
    transposed view with size-1 dimensions counts as contiguous whatever
    strides those dimensions report, so strides must come from the layout."""
    N, C, H, W = shape
    x = torch.randn(N, C, W, H).transpose(2, 3)
    assert x.shape == shape and x.is_contiguous()
    x = x.requires_grad_()
    outs, refs = _both_ops(x)
    for o, r in zip(outs, refs, strict=True):
        assert_close(o, r, torch.float32)
        g, = torch.autograd.grad(o.sum(), [x])
        g_ref, = torch.autograd.grad(r.sum(), [x])
        assert_close(g, g_ref, torch.float32, grad=True)


@pytest.mark.parametrize("shape", ZERO_SIZE_SHAPES, ids=["N0", "C0", "H0", "W0"])
def test_zero_size_dimension_gives_an_empty_output(backend, shape):
    if backend == "reference":
        pytest.skip("eager PyTorch (and so the reference) raises on the max of nothing")
    check_zero_size(shape, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", ["cuda", "triton"])
def test_zero_size_dimension_gives_an_empty_output_on_gpu(gpu_backend):
    """As above on CUDA tensors, in a child process: a device-side assert
    would poison this process's CUDA context for every later test."""
    import subprocess
    import sys

    status = fused_attn.backends()[gpu_backend]
    if "cuda" not in status.devices:
        pytest.skip(status.detail)
    code = ("import fused_attn\n"
            "from tests.utils import ZERO_SIZE_SHAPES, check_zero_size\n"
            f"with fused_attn.use_backend({gpu_backend!r}):\n"
            "    for shape in ZERO_SIZE_SHAPES:\n"
            "        check_zero_size(shape, 'cuda')\n"
            "import torch; torch.cuda.synchronize()\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


def test_nan_and_inf_propagate_like_the_reference(backend):
    x = torch.randn(2, 12, 5, 5)
    x[0, 3, 2, 2] = float("nan")
    x[1, 7, 0, 1] = float("inf")
    x[1, 8, 4, 4] = float("-inf")
    outs, refs = _both_ops(x)
    for o, r in zip(outs, refs, strict=True):
        torch.testing.assert_close(o, r, equal_nan=True, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype, big", [(torch.float16, 6e4), (torch.bfloat16, 3e38)], ids=["fp16", "bf16"])
def test_large_magnitudes_give_no_nan_where_the_reference_has_none(backend, dtype, big):
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(2, 16, 6, 6, generator=g) * 2 - 1) * big
    x = x.to(dtype)
    outs, refs = _both_ops(x)
    # (At ±3e38 a float32 sum over H·W overflows: the reference's mean is
    # ±inf / NaN there too, and so must ours be — no more, no fewer.)
    for o, r in zip(outs, refs, strict=True):
        assert torch.equal(torch.isnan(o), torch.isnan(r))
        torch.testing.assert_close(o.float(), r.float(), atol=0, rtol=TOL[dtype]["rtol"] * 2, equal_nan=True)


# ---- bad input -------------------------------------------------------------------------

def _se_args(**over):
    args = dict(x=torch.randn(2, 8, 4, 4), w1=torch.randn(2, 8), b1=torch.randn(2), w2=torch.randn(8, 2),
                b2=torch.randn(8), act="relu", gate="sigmoid", pool="avg")
    args.update(over)
    return args


SE_BAD = [
    (dict(x=torch.randn(2, 8, 4)), ValueError, "x must be 4-D"),
    (dict(x=torch.randn(2, 9, 4, 4)), ValueError, r"fc1_weight must have shape \[rd, 9\]"),
    (dict(w2=torch.randn(8, 3)), ValueError, r"fc2_weight must have shape \[8, 2\]"),
    (dict(b1=torch.randn(3)), ValueError, r"fc1_bias must have shape \[2\]"),
    (dict(b2=torch.randn(7)), ValueError, r"fc2_bias must have shape \[8\]"),
    (dict(w1=torch.randn(2, 8, dtype=torch.float64)), TypeError, "fc1_weight has dtype torch.float64"),
    (dict(w2=torch.randn(8, 2, device="meta")), ValueError, "fc2_weight is on meta"),
    (dict(x=torch.ones(2, 8, 4, 4, dtype=torch.int64)), TypeError, "x must be float32"),
    (dict(x=torch.randn(2, 8, 4, 4, dtype=torch.complex64)), TypeError, "x must be float32"),
    (dict(act="tanh"), ValueError, "act must be one of"),
    (dict(gate="relu"), ValueError, "gate must be one of"),
    (dict(pool="max"), ValueError, "pool must be one of"),
    (dict(w2=None, b2=None), ValueError, r"effective SE\) fc1_weight must be \[C, C\]"),
]


@pytest.mark.parametrize("over, exc, match", SE_BAD, ids=[m for _, _, m in SE_BAD])
def test_se_bad_input_raises_naming_the_argument_and_touches_nothing(backend, over, exc, match):
    args = _se_args(**over)
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor) and v.device.type != "meta"}
    with pytest.raises(exc, match=match):
        fused_attn.squeeze_excitation(args["x"], args["w1"], args["b1"], args["w2"], args["b2"], act=args["act"],
                                      gate=args["gate"], pool=args["pool"])
    for k, v in before.items():
        assert torch.equal(args[k], v), k


def test_module_state_untouched_after_bad_input(backend):
    se = fused_attn.nn.SqueezeExcite(8, rd_channels=2)
    eca = fused_attn.nn.EfficientChannelAttention(kernel_size=3)
    state = copy.deepcopy({**se.state_dict(), **{f"eca.{k}": v for k, v in eca.state_dict().items()}})
    for m in (se, eca):
        with pytest.raises(ValueError, match=r"x must be 4-D \[N, C, H, W\], got shape \[2, 8, 4\]"):
            m(torch.randn(2, 8, 4))
    with pytest.raises(ValueError, match="fc1_weight"):
        se(torch.randn(2, 9, 4, 4))
    after = {**se.state_dict(), **{f"eca.{k}": v for k, v in eca.state_dict().items()}}
    assert all(torch.equal(state[k], after[k]) for k in state)


# ---- fuzzing ---------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

# CI draws this many examples per op on the C++ backend (fewer under the slow
# Triton interpreter); FUSED_ATTN_FUZZ_EXAMPLES raises it for longer runs.
FUZZ_EXAMPLES = int(os.environ.get("FUSED_ATTN_FUZZ_EXAMPLES", "300"))


@st.composite
def _fuzz_case(draw, small):
    N = draw(st.integers(1, 4 if small else 9))
    C = draw(st.integers(1, 24 if small else 300))
    H = draw(st.integers(1, 8 if small else 40))
    W = draw(st.integers(1, 8 if small else 40))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    layout = draw(st.sampled_from(["nchw", "cl", "sliced", "permuted"]))
    seed = draw(st.integers(0, 2**16))
    return N, C, H, W, dtype, layout, seed


def _fuzz_input(N, C, H, W, dtype, layout, seed):
    g = torch.Generator().manual_seed(seed)
    if layout == "sliced":
        x = torch.randn(N, 2 * C, H + 1, W, generator=g)[:, ::2, 1:]
    elif layout == "permuted":
        x = torch.randn(N, C, W, H, generator=g).transpose(2, 3)
    else:
        x = torch.randn(N, C, H, W, generator=g)
        if layout == "cl":
            x = x.contiguous(memory_format=torch.channels_last)
    return x.to(dtype).requires_grad_(), g


def _check_fuzz(case, op):
    N, C, H, W, dtype, layout, seed = case
    x, g = _fuzz_input(*case)
    if op == "se":
        kw = dict(act=["relu", "silu", "gelu", "gelu_tanh", "hard_swish"][seed % 5],
                  gate=["sigmoid", "hard_sigmoid"][seed % 2], pool=["avg", "avgmax"][(seed // 2) % 2])
        effective = seed % 7 == 0
        rd = C if effective else max(1, C // (1 + seed % 16))
        w1 = (torch.randn(rd, C, generator=g) * C ** -0.5).to(dtype).requires_grad_()
        b1 = torch.randn(rd, generator=g).to(dtype).requires_grad_() if seed % 3 else None
        w2 = None if effective else (torch.randn(C, rd, generator=g) * rd ** -0.5).to(dtype).requires_grad_()
        b2 = torch.randn(C, generator=g).to(dtype).requires_grad_() if (seed % 5 and not effective) else None
        args = [x, w1, b1, w2, b2]

        def f(*a):
            return fused_attn.squeeze_excitation(*a, **kw)
    elif op == "cbam":
        light = seed % 4 == 0
        rd = max(1, C // (1 + seed % 16))
        k = [1, 3, 5, 7][(seed // 3) % 4]
        kw = dict(act=["relu", "silu", "gelu", "gelu_tanh", "hard_swish"][seed % 5],
                  gate=["sigmoid", "hard_sigmoid"][(seed // 5) % 2], light=light,
                  pool_order=["mean_max", "max_mean"][(seed // 7) % 2],
                  # Batch statistics need enough values to be well conditioned: over
                  # a handful, bf16 rounding of x1 is magnified past any tolerance;
                  # with C = 1 the two maps are equal and BN cancels the conv's
                  # scale, so its weight gradient is pure cancellation. So it is with
                  # k = 1 (z = w·m, or w0·mean + w1·max): BN makes the output invariant
                  # to the scale of w, and dL/dw along w is the remnant of BN's eps, a
                  # difference of large terms float32 resolves to ~1e-4 relative only,
                  # which spills into both weights (k = 1 in training is covered by
                  # tests/test_cbam.py's fixed cases).
                  bn_training=N * H * W >= 16 and C >= 2 and seed % 2 == 0 and k > 1)
        w1 = (torch.randn(rd, C, generator=g) * C ** -0.5).to(dtype).requires_grad_()
        b1 = torch.randn(rd, generator=g).to(dtype).requires_grad_() if seed % 3 else None
        w2 = (torch.randn(C, rd, generator=g) * rd ** -0.5).to(dtype).requires_grad_()
        b2 = torch.randn(C, generator=g).to(dtype).requires_grad_() if seed % 5 else None
        ws = (torch.randn(1, 1 if light else 2, k, k, generator=g) * 0.4 / k).to(dtype).requires_grad_()
        bnw = (torch.rand(1, generator=g) + 0.5).requires_grad_()
        bnb = (torch.randn(1, generator=g) * 0.2).requires_grad_()
        args = [x, w1, b1, w2, b2, ws, bnw, bnb]
        stats = (torch.randn(1, generator=g) * 0.2, torch.rand(1, generator=g) + 0.5)

        def f(x, w1, b1, w2, b2, ws, bnw, bnb, cbam=fused_attn.cbam, **extra):
            return cbam(x, w1, b1, w2, b2, ws, bn_weight=bnw, bn_bias=bnb, bn_running_mean=stats[0].clone(),
                        bn_running_var=stats[1].clone(), **kw, **extra)
    else:
        k = [1, 3, 5, 7, 9][seed % 5]
        kw = dict(padding=["zeros", "circular"][seed % 2], gate=["sigmoid", "hard_sigmoid"][(seed // 2) % 2])
        wc = (torch.randn(k, generator=g) * 3 / k).to(dtype).requires_grad_()
        bc = torch.randn(1, generator=g).to(dtype).requires_grad_() if seed % 3 == 0 else None
        args = [x, wc, bc]

        def f(*a):
            return fused_attn.efficient_channel_attention(*a, **kw)
    y = f(*args)
    with fused_attn.use_backend("reference"):
        leaves = [None if a is None else a.detach().double().requires_grad_() for a in args]
        if op == "cbam":   # x1 rounded as x's dtype rounds it: the max pools' ties are the kernel's
            y_ref = f(*leaves, cbam=fused_attn.reference.cbam, x1_dtype=dtype)
        else:
            y_ref = f(*leaves)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, y_ref, dtype)
    dy = torch.randn(y.shape, generator=g).to(dtype)
    wrt = [a for a in args if a is not None]
    for gr, g_ref, a in zip(torch.autograd.grad(y, wrt, dy),
                            torch.autograd.grad(y_ref, [a for a in leaves if a is not None], dy.double()), wrt, strict=True):
        # (CBAM's BatchNorm parameters stay float32: at most float32's precision)
        assert_close(gr, g_ref, torch.float32 if a.dtype == torch.float32 and dtype == torch.float64 else dtype,
                     grad=True)


@pytest.mark.parametrize("op", ["se", "eca", "cbam"])
def test_fuzz_against_reference(backend, op):
    if backend == "reference":
        pytest.skip("the reference is the oracle")
    small = backend == "triton"   # the interpreter: smaller shapes, a third of the examples
    examples = max(1, FUZZ_EXAMPLES // 3) if small else FUZZ_EXAMPLES

    @hypothesis.settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(_fuzz_case(small))
    def run(case):
        _check_fuzz(case, op)

    run()


def _check_64bit_indexing(device, backend):
    """One bfloat16 sample of 2.15·10⁹ elements (4.3 GB; offsets within the
    sample past int32) through one backend: SE forward and backward, ECA and
    CBAM forward, each checked at the last 8×8 pixels of every channel
    against float64 arithmetic from independent per-channel pools."""
    N, C, H, W = 1, 64, 5800, 5800
    assert N * C * H * W > 2**31
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.empty((N, C, H, W), dtype=torch.bfloat16, device=device)
    for c in range(C):                      # per channel: no 8.6 GB float32 temporary
        x[0, c] = torch.randn((H, W), generator=g, device=device) + 0.01 * (c - C / 2)
    mean = torch.stack([x[0, c].double().mean() for c in range(C)])      # [C], float64
    mx = torch.stack([x[0, c].amax().double() for c in range(C)])
    corner = x[0, :, -11:, -11:].double()      # the last 8×8 pixels and the 3 before them (7×7 conv)
    tol = dict(atol=2e-2, rtol=2e-2)

    def last8(t):
        return t[0, :, -8:, -8:].double()

    def randn(*shape):
        return torch.randn(shape, generator=g, device=device)

    w1 = (randn(16, C) * C ** -0.5).bfloat16()
    w2 = (randn(C, 16) * 0.25).bfloat16()
    hid = mean @ w1.double().t()

    def mlp(p):
        return torch.relu(p @ w1.double().t()) @ w2.double().t()

    gate = torch.sigmoid(mlp(mean))                                      # [C]
    with fused_attn.use_backend(backend):
        xg = x.requires_grad_()
        y = fused_attn.squeeze_excitation(xg, w1, None, w2, None)
        torch.testing.assert_close(last8(y), corner[:, -8:, -8:] * gate[:, None, None], **tol)
        # dy = y (no third 4.3 GB tensor): dL/dp = Σ_hw y·x, through the gate and the MLP, over H·W.
        (dx,) = torch.autograd.grad(y, [xg], y.detach())
        s = torch.stack([(y[0, c].detach().double() * x[0, c].detach().double()).sum() for c in range(C)])
        dp = ((s * gate * (1 - gate)) @ w2.double() * (hid > 0)) @ w1.double()
        expected = last8(y.detach()) * gate[:, None, None] + (dp / (H * W))[:, None, None]
        torch.testing.assert_close(last8(dx), expected, **tol)
        del y, dx, s
        x = x.detach()

        wc = torch.tensor([0.3, -0.5, 0.8, 0.4, -0.2], device=device).bfloat16()
        z = torch.nn.functional.conv1d(mean[None, None], wc.double()[None, None], padding=2)[0, 0]
        y = fused_attn.efficient_channel_attention(x, wc)
        torch.testing.assert_close(last8(y), corner[:, -8:, -8:] * torch.sigmoid(z)[:, None, None], **tol)
        del y

        ws = (randn(1, 2, 7, 7) * 0.05).bfloat16()
        bn = {k: torch.tensor([v], device=device) for k, v in
              dict(bn_weight=0.9, bn_bias=0.1, bn_running_mean=0.05, bn_running_var=0.8).items()}
        y = fused_attn.cbam(x, w1, None, w2, None, ws, **bn)
        gc = torch.sigmoid(mlp(mean) + mlp(mx))
        x1 = (corner.float() * gc.float()[:, None, None]).bfloat16().double()   # rounded as x's dtype, as the op does
        m = torch.stack([x1.mean(0), x1.amax(0)])[None]                          # [1, 2, 11, 11]
        zc = torch.nn.functional.conv2d(m, ws.double(), padding=3)[0, 0, -8:, -8:]   # right and bottom: true borders
        sp = torch.sigmoid((zc - 0.05) / (0.8 + 1e-5) ** 0.5 * 0.9 + 0.1)
        torch.testing.assert_close(last8(y), x1[:, -8:, -8:] * sp, **tol)


@pytest.mark.slow
def test_64bit_indexing_on_the_cpu():
    """_check_64bit_indexing on the C++ backend. Needs ~14 GB of memory and
    about two minutes: FUSED_ATTN_SLOW_TESTS=1."""
    if "cpu" not in cpu_backends():
        pytest.skip("needs the C++ backend")
    _check_64bit_indexing("cpu", "cpu")


@pytest.mark.gpu
@pytest.mark.xdist_group("gpu-memory")      # one at a time: with --dist loadgroup, in one worker
@pytest.mark.parametrize("backend", ["cuda", pytest.param("triton", marks=pytest.mark.slow)])
def test_64bit_indexing_on_the_gpu(backend):
    """_check_64bit_indexing on CUDA tensors. Triton's case is opt-in
    (FUSED_ATTN_SLOW_TESTS=1) until it has been timed on a GPU: its pool
    passes ran 4 programs here before they split rows (se.hw_split)."""
    if "cuda" not in fused_attn.backends()[backend].devices:
        pytest.skip(fused_attn.backends()[backend].detail)
    free, _ = torch.cuda.mem_get_info()
    if free < 20 * 2**30:
        pytest.skip(f"needs 20 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    _check_64bit_indexing("cuda", backend)
