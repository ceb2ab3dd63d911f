// cuda-emu glue build: the emulation's controls as ops of fused_attn_cuda_emu.
//   set_device(dev)  the emulated device the glue plans for (shim/emu.cpp's table: 0 an H100,
//                    1 four multiprocessors, 2 99 KiB of shared memory per block, 3 an sm_80)
//   trace()          the kernels launched since the last call, in order ("cudaLaunchKernelEx"
//                    for a cluster launch)
//   watch(t, g)      log the order each launch first reads t's g equal granules in (through
//                    load_pack), until unwatch(); reads() returns "kernel: i j ..." per launch
//                    since the last call
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
  m.def("watch(Tensor t, int granules) -> ()", [](const at::Tensor& t, int64_t granules) {
    TORCH_CHECK(granules > 0 && t.nbytes() % granules == 0 && t.is_non_overlapping_and_dense(),
                "cuda-emu: watch needs a dense tensor of whole granules");
    ::emu::watch(t.const_data_ptr(), t.nbytes(), t.nbytes() / granules);
  });
  m.def("unwatch() -> ()", []() { ::emu::watch(nullptr, 0, 1); });
  m.def("reads() -> str[]", []() {
    const std::vector<std::string> r = ::emu::take_reads();
    return c10::List<std::string>(r);
  });
}
