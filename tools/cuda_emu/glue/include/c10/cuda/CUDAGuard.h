// cuda-emu glue build: stands in for c10's device guard (the tensors are CPU
// tensors; the emulated device is emu's current one).
#pragma once
#include <c10/core/Device.h>

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda
