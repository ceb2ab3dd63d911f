// The scheduler of the CUDA emulation (emu.h).
#include "emu.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <numeric>
#include <random>
#include <string>
#include <vector>
#include <map>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;


namespace emu {

int policy = 0;
int64_t grid_cap = 65535;
unsigned long long launches = 0, blocks_run = 0;
static std::vector<std::string> trace;  // the kernels launched (and run) since take_trace
std::vector<std::string> take_trace() {
  std::vector<std::string> t;
  t.swap(trace);
  return t;
}
bool dry_run = false;

static const unsigned char* watch_base = nullptr;
static size_t watch_bytes = 0, watch_granule = 1;
static std::vector<long> first_reads;  // this launch's granules, in the order first read
static std::vector<char> granule_read;
static std::vector<std::string> reads;
void watch(const void* base, size_t bytes, size_t granule) {
  watch_base = static_cast<const unsigned char*>(base);
  watch_bytes = base != nullptr ? bytes : 0;
  watch_granule = granule > 0 ? granule : 1;
  reads.clear();
  first_reads.clear();
  granule_read.clear();
}
void on_load(const void* p) {
  const uintptr_t b = reinterpret_cast<uintptr_t>(p), base = reinterpret_cast<uintptr_t>(watch_base);
  if (watch_bytes == 0 || b < base || b - base >= watch_bytes) return;
  const size_t g = static_cast<size_t>(b - base) / watch_granule;
  if (granule_read.size() <= g) granule_read.resize(g + 1, 0);
  if (!granule_read[g]) granule_read[g] = 1, first_reads.push_back(static_cast<long>(g));
}
std::vector<std::string> take_reads() {
  std::vector<std::string> r;
  r.swap(reads);
  return r;
}
static cudaError_t last_error = cudaSuccess;
static cudaError_t this_launch_error = cudaSuccess;  // the last launch's own refusal
static std::mt19937_64 rng(12345);
static std::string cur_kernel;
static std::string pending_note;
static std::map<std::string, long> coverage;
static std::string pending_key;
// The emulated devices (cudaSetDevice): all sm_90 but the last.
struct Dev { int major, sms, optin, max_cluster; bool coop; };
static const Dev devs[] = {
    {9, 132, 232448, 16, true},  // 0: H100 / H200 SXM (227 KiB opt-in, clusters of 16 with the non-portable attribute)
    {9, 4, 232448, 16, true},    // 1: a small slice: few multiprocessors
    {9, 132, 101376, 8, false},  // 2: 99 KiB per block, no clusters over 8 (the planner must fall back), and no
                                 //    cooperative launch (the forward's excitation must fall back to its launches)
    {8, 108, 166912, 1, true},   // 3: sm_80: no clusters (no plan)
};
// Blocks of `threads` threads and `smem` bytes of shared memory resident per
// multiprocessor (2048 threads, 32 blocks, 228 KiB: an sm_90's limits; registers not modelled).
static int blocks_per_sm(unsigned long long threads, size_t smem) {
  int n = static_cast<int>(std::min<unsigned long long>(32, 2048 / threads));
  if (smem) n = std::min<int>(n, static_cast<int>(233472 / (smem + 1024)));
  return n;
}
static int cur_dev = 0;
struct FuncAttr { int max_dyn = 48 * 1024; bool nonportable = false; };
static std::map<const void*, FuncAttr> fattrs;
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

enum State { READY, AT_SYNC, AT_WARP, AT_CLUSTER, DONE };
// The deepest fiber of the full suite used 8.6 KiB (stack_high_water); main
// fails a run that used more than half. (With ucontext, where ASan's
// swapcontext clears the shadow of the whole target stack at every switch,
// 256 KiB stacks spent half the emulation's time in that memset.)
constexpr size_t kStack = 64 * 1024;

// Switching between the scheduler and the fibers. On x86-64 our own switch
// (the callee-saved registers, the stack pointer, MXCSR and the x87 control
// word, as the ABI has a call preserve them): glibc's swapcontext also sets
// the signal mask, a system call at every switch, and under ASan its wrapper
// clears the target stack's shadow: a quick run took 172 s with them, 55 s
// without. Elsewhere, ucontext.
#if defined(__x86_64__)
extern "C" void emu_switch_stack(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl emu_switch_stack
  .type emu_switch_stack, @function
emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch_stack, .-emu_switch_stack
)");
struct Context { void* sp = nullptr; };
// A fresh stack whose first switch "returns" into fn, entered as by a call
// (16-byte alignment + 8); fn never returns.
void context_init(Context& c, char* stack, size_t size, void (*fn)()) {
  auto* sp = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t{15});
  *--sp = 0;                               // fn's return address
  *--sp = reinterpret_cast<uint64_t>(fn);  // emu_switch_stack's
  for (int i = 0; i < 6; ++i) *--sp = 0;   // rbp, rbx, r12-r15
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  *--sp = mxcsr | (uint64_t{fpucw} << 32);
  c.sp = sp;
}
void context_switch(Context& save, const Context& load) { emu_switch_stack(&save.sp, load.sp); }
#else
struct Context { ucontext_t uc; };
void context_init(Context& c, char* stack, size_t size, void (*fn)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, fn, 0);
}
void context_switch(Context& save, const Context& load) { swapcontext(&save.uc, &load.uc); }
#endif

struct Fiber {
  Context ctx;
  char* stack = nullptr;
  State state = READY;
  long nsync = 0, nwarp = 0, ncluster = 0;
  unsigned tid = 0;   // thread in its block
  unsigned blk = 0;   // block in the running cluster (its rank)
  uint3 idx{}, bidx{};
  void* fake = nullptr;
  struct Copy { void* dst; const void* src; size_t bytes; unsigned long batch; };
  std::vector<Copy> pending;  // asynchronous copies not yet waited for
  unsigned long committed = 0;
};

std::vector<Fiber> fibers;

// A fiber's stack: kStack bytes above a guard page (an overflow faults rather
// than running into other memory), filled with a pattern whose untouched rest
// says how deep the fibers went (stack_high_water).
constexpr unsigned char kStackFill = 0xA5;
char* new_stack() {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* p = mmap(nullptr, kStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED || mprotect(p, page, PROT_NONE) != 0) fail("cannot map a fiber stack");
  char* s = static_cast<char*>(p) + page;
  std::memset(s, kStackFill, kStack);
  return s;
}
// Uninstrumented: ASan may still hold the shadow of an exited fiber's frames.
__attribute__((no_sanitize_address)) size_t bytes_used(const char* stack) {
  size_t i = 0;
  while (i < kStack && static_cast<unsigned char>(stack[i]) == kStackFill) ++i;
  return kStack - i;
}
Context sched_ctx;
int cur = -1;
bool seq_mode = false;
unsigned seq_tid = 0;
const std::function<void()>* body_fn = nullptr;
std::vector<unsigned char> slots;  // [warp of the cluster][lane][16]
unsigned block_threads = 0, cluster_blocks = 1;
// The running cluster's blocks: dynamic shared memory (one exactly sized heap
// buffer each, NaN-poisoned) and how many of each block's threads exited.
std::vector<unsigned char*> dyn_bufs;
size_t dyn_bytes = 0;
std::vector<unsigned> block_done;
std::string dyn_kernel;
const Cfg* cur_cfg = nullptr;
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
  if (!f.pending.empty()) fail("thread %u exited with %zu asynchronous copies not waited for", f.tid, f.pending.size());
  f.state = DONE;
  // The last thread of a block of a cluster: its shared memory goes away (an
  // ASan error for any later read of it through map_shared_rank).
  if (++block_done[f.blk] == block_threads && cluster_blocks > 1 && dyn_bytes) {
#if EMU_ASAN
    ASAN_POISON_MEMORY_REGION(dyn_bufs[f.blk], dyn_bytes);
#else
    std::memset(dyn_bufs[f.blk], 0xff, dyn_bytes);
#endif
  }
#if EMU_ASAN
  // This frame never returns: its shadow (and that of anything left above it)
  // is cleared, so no poison is left on the stack for its next fiber.
  __asan_handle_no_return();
  __sanitizer_start_switch_fiber(nullptr, sched_bottom, sched_size);
#endif
  context_switch(f.ctx, sched_ctx);  // never resumed
}

void yield_to_sched(State s) {
  Fiber& f = fibers[cur];
  f.state = s;
#if EMU_ASAN
  __sanitizer_start_switch_fiber(&f.fake, sched_bottom, sched_size);
#endif
  context_switch(f.ctx, sched_ctx);
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake, &sched_bottom, &sched_size);
#endif
}

void run_fiber(int i) {
  Fiber& f = fibers[i];
  cur = i;
  threadIdx = f.idx;
  blockIdx = f.bidx;
  void* fake = nullptr;
#if EMU_ASAN
  __sanitizer_start_switch_fiber(&fake, f.stack, kStack);
#endif
  context_switch(sched_ctx, f.ctx);
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
         s.rfind("channel_gate_kernel", 0) == 0;
}

// Runs the K blocks of one cluster (K = 1 without clusters) together: K·T
// fibers; __syncthreads is a barrier over a block, cluster.sync over all.
void run_cluster_fibers(const std::vector<uint3>& blocks, unsigned nthreads) {
  const unsigned K = static_cast<unsigned>(blocks.size()), total = K * nthreads;
  block_threads = nthreads;
  cluster_blocks = K;
  block_done.assign(K, 0);
  if (fibers.size() < total) fibers.resize(total);
  for (unsigned i = 0; i < total; ++i) {
    Fiber& f = fibers[i];
    const unsigned t = i % nthreads;
    if (!f.stack) f.stack = new_stack();
    f.state = READY;
    f.nsync = f.nwarp = f.ncluster = 0;
    f.tid = t;
    f.blk = i / nthreads;
    f.bidx = blocks[f.blk];
    f.pending.clear();
    f.committed = 0;
    f.idx = uint3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
    context_init(f.ctx, f.stack, kStack, fiber_entry);
  }
  const unsigned nwarps = (nthreads + 31) / 32;
  slots.assign(size_t{K} * nwarps * 32 * 16, 0);
  // A lagging block (policies 1 and 2, clusters of 2 or more): its threads run
  // only while no other block's can, so the others run ahead (to their exit,
  // where their shared memory goes) before it reads their shared memory.
  // Policy 1 holds back rank 0 (the reader of partial sums), 2 a random rank.
  int victim = -1;
  if (K > 1 && policy == 1) victim = 0;
  if (K > 1 && policy == 2) victim = static_cast<int>(rng() % K);
  for (;;) {
    bool others = false;
    if (victim >= 0)
      for (unsigned t = 0; t < total && !others; ++t)
        others = fibers[t].state == READY && fibers[t].blk != static_cast<unsigned>(victim);
    for (unsigned t : order_of(total))
      if (fibers[t].state == READY && !(others && fibers[t].blk == static_cast<unsigned>(victim)))
        run_fiber(static_cast<int>(t));
    bool all_done = true;
    for (unsigned t = 0; t < total; ++t) all_done &= fibers[t].state == DONE;
    if (all_done) return;
    bool released = false;
    for (unsigned b = 0; b < K; ++b)
      for (unsigned w = 0; w < nwarps; ++w) {
        const unsigned lo = b * nthreads + w * 32, hi = b * nthreads + std::min(nthreads, w * 32 + 32);
        unsigned at_warp = 0, at_sync = 0, at_cluster = 0, done = 0;
        for (unsigned t = lo; t < hi; ++t) {
          at_warp += fibers[t].state == AT_WARP;
          at_sync += fibers[t].state == AT_SYNC;
          at_cluster += fibers[t].state == AT_CLUSTER;
          done += fibers[t].state == DONE;
        }
        if (at_warp == 0) continue;
        if (at_warp != hi - lo) {
          blockIdx = blocks[b];
          fail("warp %u: %u lanes at a warp exchange, %u at __syncthreads, %u at cluster.sync, %u exited "
               "(divergent shuffle)", w, at_warp, at_sync, at_cluster, done);
        }
        for (unsigned t = lo; t < hi; ++t) {
          if (fibers[t].nwarp != fibers[lo].nwarp) fail("warp %u: lanes at different warp-op counts", w);
          fibers[t].state = READY;
        }
        released = true;
      }
    if (released) continue;
    // Blocks whose threads are all at __syncthreads (but the lagging block's, held back while READY).
    for (unsigned b = 0; b < K; ++b) {
      unsigned done = 0, at_sync = 0, at_cluster = 0, ready = 0;
      long n0 = -1;
      for (unsigned t = b * nthreads; t < (b + 1) * nthreads; ++t) {
        if (fibers[t].state == READY) { ++ready; continue; }
        if (fibers[t].state == DONE) { ++done; continue; }
        if (fibers[t].state == AT_CLUSTER) { ++at_cluster; continue; }
        ++at_sync;
        if (n0 < 0) n0 = fibers[t].nsync;
        else if (fibers[t].nsync != n0) {
          blockIdx = blocks[b];
          fail("threads at different __syncthreads counts (%ld vs %ld)", n0, fibers[t].nsync);
        }
      }
      if (at_sync == 0 && ready == 0) continue;
      blockIdx = blocks[b];
      if (ready) {
        if (static_cast<int>(b) != victim) fail("emulation: threads left READY");
        if (at_sync || at_cluster || done) fail("emulation: the lagging block's threads out of step");
        continue;
      }
      if (at_cluster) fail("%u threads at __syncthreads while %u are at cluster.sync", at_sync, at_cluster);
      if (done) fail("__syncthreads reached by %u threads while %u threads exited", at_sync, done);
      for (unsigned t = b * nthreads; t < (b + 1) * nthreads; ++t) fibers[t].state = READY;
      released = true;
    }
    if (released) continue;
    bool held = false;  // the lagging block's turn: nothing else can run
    for (unsigned t = 0; t < total && !held; ++t) held = fibers[t].state == READY;
    if (held) continue;
    // Every live thread of the cluster is at cluster.sync.
    unsigned done = 0, at_cluster = 0;
    long n0 = -1;
    for (unsigned t = 0; t < total; ++t) {
      if (fibers[t].state == DONE) { ++done; continue; }
      ++at_cluster;
      if (n0 < 0) n0 = fibers[t].ncluster;
      else if (fibers[t].ncluster != n0) {
        blockIdx = fibers[t].bidx;
        fail("threads at different cluster.sync counts (%ld vs %ld)", n0, fibers[t].ncluster);
      }
    }
    if (done) fail("cluster.sync reached by %u threads of the cluster while %u threads exited", at_cluster, done);
    for (unsigned t = 0; t < total; ++t) fibers[t].state = READY;
  }
}

}  // namespace

size_t stack_size() { return kStack; }
size_t stack_high_water() {
  size_t m = 0;
  for (const Fiber& f : fibers)
    if (f.stack) m = std::max(m, bytes_used(f.stack));
  return m;
}

void shared_decl(void* p, size_t bytes) {
  if (cluster_blocks > 1) fail("static __shared__ storage in a cluster launch: not emulated (one copy for all blocks)");
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
  unsigned char* ws = &slots[(size_t{f.blk} * ((nthreads + 31) / 32) + w) * 32 * 16];
  std::memcpy(ws + (f.tid & 31) * 16, in, bytes);
  f.nwarp++;
  yield_to_sched(AT_WARP);
  if (src_lane < 0 || static_cast<unsigned>(src_lane) >= lanes) src_lane = static_cast<int>(f.tid & 31);
  std::memcpy(out, ws + src_lane * 16, bytes);
  fibers[cur].nwarp++;
  yield_to_sched(AT_WARP);
}

void launch(const char* name, const char* where, const Cfg& cfg, const std::function<void()>& body) {
  cur_kernel = std::string(name) + " [" + where + "]";
  this_launch_error = cudaSuccess;
  const unsigned long long nthreads = 1ull * cfg.block.x * cfg.block.y * cfg.block.z;
  if (cfg.grid.x == 0 || cfg.grid.y == 0 || cfg.grid.z == 0 || cfg.grid.y > 65535 || cfg.grid.z > 65535 ||
      cfg.grid.x > 0x7fffffffu || nthreads == 0 || nthreads > 1024 || cfg.block.z > 64) {
    std::fprintf(stderr, "EMU: invalid launch configuration for %s: grid (%u,%u,%u) block (%u,%u,%u)\n", cur_kernel.c_str(),
                 cfg.grid.x, cfg.grid.y, cfg.grid.z, cfg.block.x, cfg.block.y, cfg.block.z);
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  // A cooperative launch runs as one cluster of all its blocks (grid.sync as cluster.sync).
  const dim3 cl = cfg.cooperative ? cfg.grid : cfg.cluster;
  const unsigned long long K64 = 1ull * cl.x * cl.y * cl.z;
  if (cfg.cooperative) {
    const Dev& d = devs[cur_dev];
    const char* why = nullptr;
    cudaError_t err = cudaErrorCooperativeLaunchTooLarge;
    if (cfg.func == nullptr) fail("a cooperative launch without cudaLaunchKernelEx");
    if (cfg.cluster.x * cfg.cluster.y * cfg.cluster.z != 1) why = "a cluster in a cooperative launch (not emulated)", err = cudaErrorInvalidValue;
    else if (!d.coop) why = "the device has no cooperative launch", err = cudaErrorNotSupported;
    else if (K64 > 1ull * d.sms * blocks_per_sm(nthreads, cfg.smem)) why = "more blocks than can be resident at once";
    if (why) {
      std::fprintf(stderr, "EMU: launch refused for %s: %s (%llu blocks)\n", cur_kernel.c_str(), why, K64);
      last_error = this_launch_error = err;
      return;
    }
    if (K64 > 256) fail("a cooperative launch of %llu blocks: too many to emulate together (256 at most)", K64);
  }
  const unsigned K = static_cast<unsigned>(K64);
  if (cfg.func != nullptr && !cfg.cooperative) {  // cudaLaunchKernelEx: the cluster, the shared memory and the kernel's attributes
    const Dev& d = devs[cur_dev];
    const FuncAttr& fa = fattrs[cfg.func];
    const char* why = nullptr;
    cudaError_t err = cudaErrorInvalidValue;
    if (K == 0 || cfg.grid.x % cl.x || cfg.grid.y % cl.y || cfg.grid.z % cl.z) why = "grid not a multiple of the cluster";
    else if (K > 16 || (K > 8 && !fa.nonportable) || static_cast<int>(K) > d.max_cluster)
      why = "cluster size (over 8 needs cudaFuncAttributeNonPortableClusterSizeAllowed; at most the device's)", err = cudaErrorInvalidClusterSize;
    else if (cfg.smem > static_cast<size_t>(fa.max_dyn)) why = "dynamic shared memory above the kernel's cudaFuncAttributeMaxDynamicSharedMemorySize";
    else if (cfg.smem > static_cast<size_t>(d.optin)) why = "dynamic shared memory above the device's opt-in limit";
    if (why) {
      std::fprintf(stderr, "EMU: launch refused for %s: %s (cluster %u, %zu B)\n", cur_kernel.c_str(), why, K, cfg.smem);
      last_error = err;
      return;
    }
  } else if (K != 1 && !cfg.cooperative) {
    fail("a cluster launch without cudaLaunchKernelEx");
  }
  ++launches;
  if (dry_run) { pending_note.clear(); return; }
  trace.emplace_back(name);
  if (cfg.func != nullptr) {  // keyed by the kernel's own name (dyn_smem), once it runs
    pending_key = " block=" + std::to_string(cfg.block.x) + (cfg.cooperative ? " cooperative" : " cluster=" + std::to_string(K)) +
                  pending_note;
    pending_note.clear();
  } else {
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
  if (watch_bytes != 0) {
    first_reads.clear();
    granule_read.assign(granule_read.size(), 0);
  }
  const unsigned long long nblocks = 1ull * cfg.grid.x * cfg.grid.y * cfg.grid.z;
  if (nblocks > (1ull << 26)) fail("too many blocks to emulate (%llu)", nblocks);
  cur_cfg = &cfg;
  dyn_bytes = cfg.smem;
  dyn_bufs.assign(K, nullptr);
  for (auto& b : dyn_bufs) b = static_cast<unsigned char*>(std::malloc(dyn_bytes));
  // Clusters in the scheduling policy's order; a cluster's blocks in rank order.
  const dim3 cg{cfg.grid.x / cl.x, cfg.grid.y / cl.y, cfg.grid.z / cl.z};
  std::vector<unsigned> border = order_of(static_cast<unsigned>(nblocks / K));
  const bool seq = is_barrier_free(name) && K == 1 && cfg.func == nullptr;
  std::vector<uint3> blocks(K);
  for (unsigned b : border) {
    const uint3 c{b % cg.x, (b / cg.x) % cg.y, b / (cg.x * cg.y)};
    for (unsigned r = 0; r < K; ++r)
      blocks[r] = uint3{c.x * cl.x + r % cl.x, c.y * cl.y + (r / cl.x) % cl.y, c.z * cl.z + r / (cl.x * cl.y)};
    blockIdx = blocks[0];
    poison_shared();
    for (auto* d : dyn_bufs) {
#if EMU_ASAN
      ASAN_UNPOISON_MEMORY_REGION(d, dyn_bytes);
#endif
      std::memset(d, 0xff, dyn_bytes);
    }
    blocks_run += K;
    if (seq) {
      seq_mode = true;
      for (unsigned t : order_of(static_cast<unsigned>(nthreads))) {
        seq_tid = t;
        threadIdx = uint3{t % cfg.block.x, (t / cfg.block.x) % cfg.block.y, t / (cfg.block.x * cfg.block.y)};
        body();
      }
      seq_mode = false;
    } else {
      run_cluster_fibers(blocks, static_cast<unsigned>(nthreads));
    }
  }
  for (auto* d : dyn_bufs) {
#if EMU_ASAN
    ASAN_UNPOISON_MEMORY_REGION(d, dyn_bytes);
#endif
    std::free(d);
  }
  dyn_bufs.clear();
  cluster_blocks = 1;
  cur_cfg = nullptr;
  if (watch_bytes != 0 && !first_reads.empty()) {
    std::string line = std::string(name) + ":";
    for (long g : first_reads) line += " " + std::to_string(g);
    reads.push_back(line);
  }
}

void grid_sync() {
  if (cur_cfg == nullptr || !cur_cfg->cooperative) fail("grid.sync in a launch that is not cooperative");
  cluster_sync();
}

unsigned char* dyn_smem(const char* kernel) {
  if (seq_mode || cur < 0 || cur_cfg == nullptr) fail("dynamic shared memory outside a fiber");
  if (!pending_key.empty()) {
    std::string w(kernel);
    const size_t lb = w.find('['), rb = w.rfind(']'), sp = w.find('(');
    std::string nm = w.substr(0, sp);
    nm = nm.substr(nm.rfind(' ') + 1);
    coverage[nm + " " + (lb != std::string::npos ? w.substr(lb, rb - lb + 1) : "") + pending_key]++;
    pending_key.clear();
    cur_kernel = nm;
  }
  return dyn_bufs[fibers[cur].blk];
}

unsigned cluster_rank() {
  if (seq_mode || cur < 0) fail("cluster op outside a fiber");
  return fibers[cur].blk;
}
unsigned cluster_size() { return cluster_blocks; }

void cluster_sync() {
  if (seq_mode || cur < 0) fail("cluster.sync outside a fiber");
  fibers[cur].ncluster++;
  yield_to_sched(AT_CLUSTER);
}

void* map_shared(void* p, unsigned rank) {
  if (seq_mode || cur < 0) fail("map_shared_rank outside a fiber");
  const Fiber& f = fibers[cur];
  if (rank >= cluster_blocks) fail("map_shared_rank to rank %u of a cluster of %u", rank, cluster_blocks);
  unsigned char* own = dyn_bufs[f.blk];
  const unsigned char* q = static_cast<unsigned char*>(p);
  if (q < own || q >= own + dyn_bytes)
    fail("map_shared_rank of %p, not in the block's dynamic shared memory [%p, +%zu)", p, static_cast<void*>(own), dyn_bytes);
  return dyn_bufs[rank] + (q - own);
}

void async_copy(void* dst, const void* src, size_t bytes) {
  if (seq_mode || cur < 0) fail("asynchronous copy outside a fiber");
  if (bytes != 4 && bytes != 8 && bytes != 16) fail("__pipeline_memcpy_async of %zu bytes (4, 8 or 16)", bytes);
  if (reinterpret_cast<uintptr_t>(dst) % bytes || reinterpret_cast<uintptr_t>(src) % bytes)
    fail("__pipeline_memcpy_async of %zu bytes, misaligned: dst %p src %p", bytes, dst, src);
  const unsigned char* d = static_cast<unsigned char*>(dst);
  bool in_smem = false;
  for (auto* b : dyn_bufs) in_smem |= d >= b && d + bytes <= b + dyn_bytes;
  if (!in_smem) fail("__pipeline_memcpy_async to %p: not the block's shared memory", dst);
  Fiber& f = fibers[cur];
  f.pending.push_back(Fiber::Copy{dst, src, bytes, f.committed});
}
void pipe_commit() {
  if (seq_mode || cur < 0) fail("__pipeline_commit outside a fiber");
  fibers[cur].committed++;
}
void pipe_wait(unsigned n) {
  if (seq_mode || cur < 0) fail("__pipeline_wait_prior outside a fiber");
  Fiber& f = fibers[cur];
  std::vector<Fiber::Copy> keep;
  for (const auto& c : f.pending) {
    if (c.batch + n < f.committed) std::memcpy(c.dst, c.src, c.bytes);  // batch complete
    else keep.push_back(c);
  }
  f.pending.swap(keep);
}

// ---- the emulated devices and the runtime calls of se_fused.cu's host code ----
cudaError_t func_get_attributes(cudaFuncAttributes* a, const void* f) {
  *a = cudaFuncAttributes{};
  a->sharedSizeBytes = 0;  // se_fused.cu's kernels: dynamic shared memory only
  a->ptxVersion = a->binaryVersion = 90;
  a->maxThreadsPerBlock = 1024;
  a->maxDynamicSharedSizeBytes = fattrs[f].max_dyn;
  return cudaSuccess;
}
cudaError_t func_set_attribute(const void* f, cudaFuncAttribute a, int v) {
  const Dev& d = devs[cur_dev];
  if (a == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (v < 0 || v > d.optin) return last_error = cudaErrorInvalidValue;
    fattrs[f].max_dyn = v;
  } else if (a == cudaFuncAttributeNonPortableClusterSizeAllowed) {
    if (d.max_cluster <= 8 && v) return last_error = cudaErrorInvalidValue;  // a part without clusters of 16
    fattrs[f].nonportable = v != 0;
  } else {
    return last_error = cudaErrorInvalidValue;
  }
  return cudaSuccess;
}
cudaError_t max_active_clusters(int* n, const void* f, const cudaLaunchConfig_t* cfg) {
  const Cfg c = cfg_of(cfg, f);
  const FuncAttr& fa = fattrs[f];
  const Dev& d = devs[cur_dev];
  const int K = static_cast<int>(c.cluster.x * c.cluster.y * c.cluster.z);
  *n = 0;
  if (K > 16 || (K > 8 && !fa.nonportable)) return last_error = cudaErrorInvalidClusterSize;
  if (c.smem > static_cast<size_t>(fa.max_dyn)) return last_error = cudaErrorInvalidValue;
  if (K > d.max_cluster) return cudaSuccess;
  const int per_sm = c.smem * 2 <= static_cast<size_t>(d.optin) ? 2 : 1;
  *n = std::max(1, d.sms * per_sm / K);
  return cudaSuccess;
}
cudaError_t launch_error() { return this_launch_error; }
cudaError_t max_active_blocks(int* n, const void* f, int threads, size_t smem) {
  const FuncAttr& fa = fattrs[f];
  *n = 0;
  if (threads <= 0 || threads > 1024 || smem > static_cast<size_t>(fa.max_dyn)) return last_error = cudaErrorInvalidValue;
  *n = blocks_per_sm(static_cast<unsigned long long>(threads), smem);
  return cudaSuccess;
}
Cfg cfg_of(const cudaLaunchConfig_t* cfg, const void* f) {
  Cfg c(cfg->gridDim, cfg->blockDim, cfg->dynamicSmemBytes, cfg->stream);
  for (unsigned i = 0; i < cfg->numAttrs; ++i) {
    if (cfg->attrs[i].id == cudaLaunchAttributeClusterDimension)
      c.cluster = dim3(cfg->attrs[i].val.clusterDim.x, cfg->attrs[i].val.clusterDim.y, cfg->attrs[i].val.clusterDim.z);
    if (cfg->attrs[i].id == cudaLaunchAttributeCooperative) c.cooperative = cfg->attrs[i].val.cooperative != 0;
  }
  c.func = f;
  return c;
}

}  // namespace emu

cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::last_error;
  emu::last_error = cudaSuccess;
  return e;
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidClusterSize: return "invalid cluster size";
    case cudaErrorCooperativeLaunchTooLarge: return "too many blocks in cooperative launch";
    case cudaErrorNotSupported: return "operation not supported";
  }
  return "unknown error";
}
cudaError_t cudaGetDevice(int* dev) { *dev = emu::cur_dev; return cudaSuccess; }
cudaError_t cudaSetDevice(int dev) {
  if (dev < 0 || dev >= static_cast<int>(sizeof(emu::devs) / sizeof(emu::devs[0]))) return cudaErrorInvalidDevice;
  emu::cur_dev = dev;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int dev) {
  if (dev < 0 || dev >= static_cast<int>(sizeof(emu::devs) / sizeof(emu::devs[0]))) return cudaErrorInvalidDevice;
  const emu::Dev& d = emu::devs[dev];
  switch (a) {
    case cudaDevAttrMultiProcessorCount: *v = d.sms; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *v = d.major; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = d.optin; return cudaSuccess;
    case cudaDevAttrCooperativeLaunch: *v = d.coop ? 1 : 0; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
