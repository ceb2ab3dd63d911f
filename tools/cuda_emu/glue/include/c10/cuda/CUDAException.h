// cuda-emu glue build: C10_CUDA_CHECK over the emulated runtime's errors.
#pragma once
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#define C10_CUDA_CHECK(EXPR)                                                                                 \
  do {                                                                                                       \
    const cudaError_t emu_err_ = (EXPR);                                                                     \
    TORCH_CHECK(emu_err_ == cudaSuccess, "CUDA error (emulated): ", cudaGetErrorString(emu_err_), " from ", \
                #EXPR);                                                                                      \
  } while (0)
