// The scheduler of the CUDA emulation (emu.h).
#include "emu.h"

#include <ucontext.h>

#include <algorithm>
#include <cstdarg>
#include <numeric>
#include <random>
#include <string>
#include <vector>
#include <map>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;


namespace emu {

int policy = 0;
unsigned long long launches = 0, blocks_run = 0;
bool dry_run = false;
static cudaError_t last_error = cudaSuccess;
static std::mt19937_64 rng(12345);
static std::string cur_kernel;
static std::string pending_note;
static std::map<std::string, long> coverage;
void note(const char* name, long v) { pending_note = std::string(" ") + name + "=" + std::to_string(v); }
void print_coverage() {
  std::printf("coverage (kernel instantiation, block, grid.z>1, notes: launches):\n");
  for (auto& kv : coverage) std::printf("  %6ld  %s\n", kv.second, kv.first.c_str());
}

[[noreturn]] void fail(const char* fmt, ...) {
  std::fprintf(stderr, "EMU FAILURE in %s block (%u,%u,%u): ", cur_kernel.c_str(), blockIdx.x, blockIdx.y, blockIdx.z);
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  std::abort();
}

namespace {

enum State { READY, AT_SYNC, AT_WARP, DONE };
constexpr size_t kStack = 256 * 1024;

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;
  State state = READY;
  long nsync = 0, nwarp = 0;
  unsigned tid = 0;
  uint3 idx{};
  void* fake = nullptr;
};

std::vector<Fiber> fibers;
ucontext_t sched_ctx;
int cur = -1;
bool seq_mode = false;
unsigned seq_tid = 0;
const std::function<void()>* body_fn = nullptr;
unsigned char slots[32][32][16];
const void* sched_bottom = nullptr;
size_t sched_size = 0;

unsigned long long block_gen = 0;
std::map<void*, unsigned long long> shared_gen;
void poison_shared() { ++block_gen; }

void fiber_entry() {
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &sched_bottom, &sched_size);
#endif
  (*body_fn)();
  Fiber& f = fibers[cur];
  f.state = DONE;
#if EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, sched_bottom, sched_size);
#endif
  setcontext(&sched_ctx);
}

void yield_to_sched(State s) {
  Fiber& f = fibers[cur];
  f.state = s;
#if EMU_ASAN
  __sanitizer_start_switch_fiber(&f.fake, sched_bottom, sched_size);
#endif
  swapcontext(&f.ctx, &sched_ctx);
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake, &sched_bottom, &sched_size);
#endif
}

void run_fiber(int i) {
  Fiber& f = fibers[i];
  cur = i;
  threadIdx = f.idx;
  void* fake = nullptr;
#if EMU_ASAN
  __sanitizer_start_switch_fiber(&fake, f.stack, kStack);
#endif
  swapcontext(&sched_ctx, &f.ctx);
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  cur = -1;
}

std::vector<unsigned> order_of(unsigned n) {
  std::vector<unsigned> o(n);
  std::iota(o.begin(), o.end(), 0u);
  if (policy == 1) std::reverse(o.begin(), o.end());
  if (policy == 2) std::shuffle(o.begin(), o.end(), rng);
  return o;
}

bool is_barrier_free(const char* name) {
  const std::string s(name);
  return s.find("apply_kernel") != std::string::npos || s.find("combine") != std::string::npos ||
         s.rfind("conv_kernel", 0) == 0;
}

void run_block_fibers(unsigned nthreads) {
  if (fibers.size() < nthreads) fibers.resize(nthreads);
  for (unsigned t = 0; t < nthreads; ++t) {
    Fiber& f = fibers[t];
    if (!f.stack) f.stack = static_cast<char*>(std::malloc(kStack));
    f.state = READY;
    f.nsync = f.nwarp = 0;
    f.tid = t;
    f.idx = uint3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  const unsigned nwarps = (nthreads + 31) / 32;
  for (;;) {
    for (unsigned t : order_of(nthreads))
      if (fibers[t].state == READY) run_fiber(static_cast<int>(t));
    bool all_done = true;
    for (unsigned t = 0; t < nthreads; ++t) all_done &= fibers[t].state == DONE;
    if (all_done) return;
    bool released = false;
    for (unsigned w = 0; w < nwarps; ++w) {
      const unsigned lo = w * 32, hi = std::min(nthreads, lo + 32);
      unsigned at_warp = 0, at_sync = 0, done = 0;
      for (unsigned t = lo; t < hi; ++t) {
        at_warp += fibers[t].state == AT_WARP;
        at_sync += fibers[t].state == AT_SYNC;
        done += fibers[t].state == DONE;
      }
      if (at_warp == 0) continue;
      if (at_warp != hi - lo)
        fail("warp %u: %u lanes at a warp exchange, %u at __syncthreads, %u exited (divergent shuffle)", w, at_warp,
             at_sync, done);
      for (unsigned t = lo; t < hi; ++t) {
        if (fibers[t].nwarp != fibers[lo].nwarp) fail("warp %u: lanes at different warp-op counts", w);
        fibers[t].state = READY;
      }
      released = true;
    }
    if (released) continue;
    unsigned done = 0, at_sync = 0;
    long n0 = -1;
    for (unsigned t = 0; t < nthreads; ++t) {
      if (fibers[t].state == DONE) { ++done; continue; }
      ++at_sync;
      if (n0 < 0) n0 = fibers[t].nsync;
      else if (fibers[t].nsync != n0) fail("threads at different __syncthreads counts (%ld vs %ld)", n0, fibers[t].nsync);
    }
    if (done) fail("__syncthreads reached by %u threads while %u threads exited", at_sync, done);
    for (unsigned t = 0; t < nthreads; ++t) fibers[t].state = READY;
  }
}

}  // namespace

void shared_decl(void* p, size_t bytes) {
  unsigned long long& g = shared_gen[p];
  if (g != block_gen) {
    g = block_gen;
    std::memset(p, 0xff, bytes);
  }
}

int lane_id() {
  if (seq_mode) fail("warp op in a kernel run without fibers");
  return static_cast<int>(fibers[cur].tid & 31);
}

void syncthreads() {
  if (seq_mode) fail("__syncthreads in a kernel run without fibers");
  fibers[cur].nsync++;
  yield_to_sched(AT_SYNC);
}

void warp_exchange(const void* in, void* out, size_t bytes, unsigned mask, int src_lane) {
  if (seq_mode) fail("warp op in a kernel run without fibers");
  Fiber& f = fibers[cur];
  const unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
  const unsigned w = f.tid / 32, lanes = std::min(32u, nthreads - w * 32);
  const unsigned full = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
  if (mask != full) fail("warp op with mask %08x, warp has lanes %08x", mask, full);
  std::memcpy(slots[w][f.tid & 31], in, bytes);
  f.nwarp++;
  yield_to_sched(AT_WARP);
  if (src_lane < 0 || static_cast<unsigned>(src_lane) >= lanes) src_lane = static_cast<int>(f.tid & 31);
  std::memcpy(out, slots[w][src_lane], bytes);
  fibers[cur].nwarp++;
  yield_to_sched(AT_WARP);
}

void launch(const char* name, const char* where, const Cfg& cfg, const std::function<void()>& body) {
  cur_kernel = std::string(name) + " [" + where + "]";
  const unsigned long long nthreads = 1ull * cfg.block.x * cfg.block.y * cfg.block.z;
  if (cfg.grid.x == 0 || cfg.grid.y == 0 || cfg.grid.z == 0 || cfg.grid.y > 65535 || cfg.grid.z > 65535 ||
      cfg.grid.x > 0x7fffffffu || nthreads == 0 || nthreads > 1024 || cfg.block.z > 64) {
    std::fprintf(stderr, "EMU: invalid launch configuration for %s: grid (%u,%u,%u) block (%u,%u,%u)\n", cur_kernel.c_str(),
                 cfg.grid.x, cfg.grid.y, cfg.grid.z, cfg.block.x, cfg.block.y, cfg.block.z);
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  ++launches;
  if (dry_run) { pending_note.clear(); return; }
  {
    std::string w(where);
    const size_t lb = w.find('['), rb = w.rfind(']');
    std::string key = std::string(name) + " " + (lb != std::string::npos ? w.substr(lb, rb - lb + 1) : w) + " block=" +
                      std::to_string(cfg.block.x) + "x" + std::to_string(cfg.block.y) +
                      (cfg.grid.z > 1 ? " segmented(grid.z>1)" : "") + pending_note;
    coverage[key]++;
    pending_note.clear();
  }
  gridDim = cfg.grid;
  blockDim = cfg.block;
  body_fn = &body;
  const unsigned long long nblocks = 1ull * cfg.grid.x * cfg.grid.y * cfg.grid.z;
  if (nblocks > (1ull << 26)) fail("too many blocks to emulate (%llu)", nblocks);
  std::vector<unsigned> border = order_of(static_cast<unsigned>(nblocks));
  const bool seq = is_barrier_free(name);
  for (unsigned b : border) {
    blockIdx = uint3{b % cfg.grid.x, (b / cfg.grid.x) % cfg.grid.y, b / (cfg.grid.x * cfg.grid.y)};
    poison_shared();
    ++blocks_run;
    if (seq) {
      seq_mode = true;
      for (unsigned t : order_of(static_cast<unsigned>(nthreads))) {
        seq_tid = t;
        threadIdx = uint3{t % cfg.block.x, (t / cfg.block.x) % cfg.block.y, t / (cfg.block.x * cfg.block.y)};
        body();
      }
      seq_mode = false;
    } else {
      run_block_fibers(static_cast<unsigned>(nthreads));
    }
  }
}

}  // namespace emu

cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::last_error;
  emu::last_error = cudaSuccess;
  return e;
}
