// cuda-emu glue build: the emulation's controls as ops of fused_attn_cuda_emu.
//   set_device(dev)  the emulated device the glue plans for (shim/emu.cpp's table: 0 an H100,
//                    1 four multiprocessors, 2 99 KiB of shared memory per block, 3 an sm_80)
//   trace()          the kernels launched since the last call, in order ("cudaLaunchKernelEx"
//                    for a cluster launch)
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <string>
#include <vector>

TORCH_LIBRARY_FRAGMENT(fused_attn_cuda_emu, m) {
  m.def("set_device(int dev) -> ()", [](int64_t dev) {
    TORCH_CHECK(cudaSetDevice(static_cast<int>(dev)) == cudaSuccess, "cuda-emu: no emulated device ", dev);
  });
  m.def("trace() -> str[]", []() {
    const std::vector<std::string> t = ::emu::take_trace();
    return c10::List<std::string>(t);
  });
}
