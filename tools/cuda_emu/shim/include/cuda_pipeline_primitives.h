// CPU emulation (emu.h): asynchronous copies, queued per thread and done at
// __pipeline_wait_prior (so a read before the wait sees the NaN poison).
#pragma once
#include "emu.h"
inline void __pipeline_memcpy_async(void* dst, const void* src, size_t bytes, size_t zfill = 0) {
  if (zfill) ::emu::fail("__pipeline_memcpy_async with zero fill: not emulated");
  ::emu::async_copy(dst, src, bytes);
}
inline void __pipeline_commit() { ::emu::pipe_commit(); }
inline void __pipeline_wait_prior(size_t n) { ::emu::pipe_wait(static_cast<unsigned>(n)); }
