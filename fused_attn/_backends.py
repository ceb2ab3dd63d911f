"""Which implementation runs an op, and why.

Backends, in order of preference for each device:

* CUDA tensors: ``cuda`` (hand-written kernels), ``triton``, ``reference``
* CPU tensors:  ``cpu`` (C++ kernels), ``reference``; ``triton`` only when
  forced and ``TRITON_INTERPRET=1`` (the interpreter is for tests, not speed)

``auto`` takes the first that can run. ``FUSED_ATTN_BACKEND`` (read at import)
or the :func:`use_backend` context manager forces one; a forced backend that
cannot run raises, naming the reason: it never falls back silently.
"""
import contextlib
import dataclasses
import os
from collections.abc import Iterator

import torch

from . import _extension

BACKENDS = ("cuda", "triton", "cpu", "reference")
CHOICES = ("auto",) + BACKENDS
_PREFERENCE = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here: on which device types, or why not."""

    name: str
    devices: tuple[str, ...]
    detail: str

    @property
    def available(self) -> bool:
        return bool(self.devices)

    def __str__(self) -> str:
        where = f"runs on {', '.join(self.devices)}" if self.devices else "unavailable"
        return f"{self.name:<9} {where}: {self.detail}"


def _cpu_status():
    if not _extension.HAS_C:
        return BackendStatus("cpu", (), _extension.LOAD_ERROR)
    threads = "" if _extension.CPU_OPENMP else ", one thread: built without OpenMP"
    return BackendStatus("cpu", ("cpu",), f"C++ kernels ({_extension.CPU_ISA}{threads})")


def _cuda_status():
    if not _extension.HAS_C:
        return BackendStatus("cuda", (), _extension.LOAD_ERROR)
    if not _extension.CUDA_VERSION:
        return BackendStatus("cuda", (), "the extension was built without CUDA (no toolkit, or a CPU or ROCm torch, "
                                         "at build time)")
    import torch

    v = _extension.CUDA_VERSION
    built = f"CUDA kernels built with CUDA {v // 1000}.{v % 1000 // 10} for sm {_extension.CUDA_ARCHS}"
    if not torch.cuda.is_available():
        return BackendStatus("cuda", (), f"{built}, but no CUDA device is visible")
    return BackendStatus("cuda", ("cuda",), built)


def _triton_status():
    import torch

    from . import triton as fa_triton

    if not fa_triton.AVAILABLE:
        return BackendStatus("triton", (), fa_triton.ERROR)
    import triton

    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    if fa_triton.INTERPRET:
        devices.append("cpu")
    if not devices:
        return BackendStatus("triton", (), f"triton {triton.__version__} is installed but there is no GPU "
                                           "(set TRITON_INTERPRET=1 to run the kernels on CPU tensors, slowly)")
    mode = ", interpreted on CPU tensors (TRITON_INTERPRET=1)" if fa_triton.INTERPRET else ""
    return BackendStatus("triton", tuple(devices), f"Triton kernels (triton {triton.__version__}){mode}")


def _reference_status():
    return BackendStatus("reference", ("cpu", "cuda"), "eager PyTorch (fused_attn.reference)")


def _probe():
    return {s.name: s for s in (_cuda_status(), _triton_status(), _cpu_status(), _reference_status())}


# Computed once: availability does not change while the process runs, and
# torch.compile traces plain dictionary lookups without graph breaks.
_STATUS = _probe()


def backends() -> dict[str, BackendStatus]:
    """``{name: BackendStatus}`` for every backend: where it runs or why it can't.

    >>> for status in fused_attn.backends().values(): print(status)
    """
    return dict(_STATUS)


def _validate(name):
    if name not in CHOICES:
        raise ValueError(f"fused_attn backend must be one of {CHOICES}, got {name!r}")
    return name


_ENV_CHOICE = _validate(os.environ.get("FUSED_ATTN_BACKEND", "auto") or "auto")
_forced: list[str] = []  # stack of use_backend() choices, innermost last


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the ops in this block on backend ``name`` (or ``"auto"``)."""
    _forced.append(_validate(name))
    try:
        yield
    finally:
        _forced.pop()


def current_choice() -> str:
    """The requested backend: the innermost use_backend(), else FUSED_ATTN_BACKEND."""
    return _forced[-1] if _forced else _ENV_CHOICE


def under_torch_func():
    """Whether a torch.func transform (grad, vjp, jacrev, vmap...) is active.
    PyTorch refuses the compiled ops' C++ autograd under them ("cannot use C++
    torch::autograd::Function with functorch transforms"), and vmap would run
    a fused op once per sample; the reference runs under every transform.
    torch.compile traces this check as the constant it is (a compiled
    torch.func.grad takes the reference; a plain compiled call, the fused op)."""
    return torch._C._are_functorch_transforms_active()


def in_onnx_export():
    """Whether torch.onnx.export is tracing (either exporter). ONNX has no
    operator for the fused ops: exported as the reference's ATen ops, the
    blocks become standard ONNX (ReduceMean, Conv / Gemm, Sigmoid, Mul...)
    that any ONNX runtime, TensorRT included, runs and may fuse itself."""
    return torch.onnx.is_in_onnx_export()


def resolve(device_type, missing=()):
    """The backend that runs an op on tensors of ``device_type``, or raises.
    ``missing``: {backend: why} for backends that lack this op (``auto`` skips
    them; forcing one raises with the reason). Under a torch.func transform or
    an ONNX export: the reference, whatever was chosen (see under_torch_func,
    in_onnx_export)."""
    if under_torch_func() or in_onnx_export():
        return "reference"
    choice = current_choice()
    missing = dict(missing)
    if choice == "auto":
        for name in _PREFERENCE.get(device_type, ("reference",)):
            if device_type in _STATUS[name].devices and name not in missing:
                return name
        return "reference"
    status = _STATUS[choice]
    if choice in missing:
        raise RuntimeError(f"fused_attn backend {choice!r} was requested but {missing[choice]}")
    if choice == "reference" or device_type in status.devices:
        return choice
    why = status.detail if not status.available else f"it runs on {', '.join(status.devices)} only"
    raise RuntimeError(f"fused_attn backend {choice!r} was requested but cannot run on {device_type} tensors: {why}")
