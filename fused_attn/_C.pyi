# The compiled extension's Python module (csrc/fused_attn.cpp, PyInit__C). Its
# ops are registered with the dispatcher (torch.ops.fused_attn.*), not here.
#: CUDA runtime version compiled with (e.g. 13000), 0 in a CPU-only build.
CUDA_VERSION: int
#: GPU architectures compiled in, e.g. "750,800,900"; "" in a CPU-only build.
CUDA_ARCHS: str
#: Instruction set the CPU kernels use on this machine: "avx2" or "baseline".
CPU_ISA: str
#: 1 when the CPU kernels were compiled with OpenMP, else 0.
CPU_OPENMP: int
