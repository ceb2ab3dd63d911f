// Driver: shim self-tests, launch-configuration checks for big shapes, then the CBAM, SE, ECA- and SE-excitation suites.
#include "cbam_cuda.h"
#include "common.h"

#include <cstring>

using namespace fused_attn::cuda;

Stats g_stats;
int g_verbose = 0;
void run_cbam_suite(bool quick);
void run_se_suite(bool quick);
void run_se_fused_suite(bool quick);
void run_eca_excite_suite(bool quick);
void run_se_excite_suite(bool quick);

static bool test_conversions() {
  long bad = 0;
  // half -> float for every half; float -> half against GCC's _Float16 and the reference rounding.
  for (uint32_t h = 0; h < 65536; ++h) {
    _Float16 f16;
    const uint16_t hb = static_cast<uint16_t>(h);
    std::memcpy(&f16, &hb, 2);
    const float ref = static_cast<float>(f16), got = __half2float(__half{hb});
    if (!(ref == got || (std::isnan(ref) && std::isnan(got)))) ++bad;
    // bf16 -> float -> bf16 round trip
    const float bf = __bfloat162float(__nv_bfloat16{hb});
    if (!std::isnan(bf) && __float2bfloat16_rn(bf).x != hb) ++bad;
  }
  std::mt19937_64 rng(1);
  for (int i = 0; i < 4000000; ++i) {
    uint32_t u = static_cast<uint32_t>(rng());
    if (i % 3 == 0) u = (u & 0x807fffffu) | ((100u + (u >> 24) % 60u) << 23);  // near half's range
    float f;
    std::memcpy(&f, &u, 4);
    const _Float16 r16 = static_cast<_Float16>(f);
    uint16_t rb;
    std::memcpy(&rb, &r16, 2);
    const __half h = __float2half_rn(f);
    if (std::isnan(f) ? !((h.x & 0x7fff) > 0x7c00) : h.x != rb) {
      if (bad < 5) std::printf("  f->half %a: got %04x want %04x\n", f, h.x, rb);
      ++bad;
    }
    if (!std::isnan(f) && static_cast<double>(__half2float(h)) != ref_round_half(f)) ++bad;
    const __nv_bfloat16 b = __float2bfloat16_rn(f);
    if (std::isnan(f) ? !((b.x & 0x7fff) > 0x7f80) : static_cast<double>(__bfloat162float(b)) != ref_round_bf16(f)) {
      if (bad < 5) std::printf("  f->bf16 %a: got %04x\n", f, b.x);
      ++bad;
    }
  }
  std::printf("shim conversions: %s (%ld bad)\n", bad ? "FAIL" : "ok", bad);
  return bad == 0;
}

// Launch configurations (grid limits) for big shapes, without running the kernels.
static bool test_launch_configs() {
  emu::dry_run = true;
  long bad = 0, n = 0;
  static char dummy[64] __attribute__((aligned(64)));
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::F64})
    for (int cl = 0; cl < 2; ++cl)
      for (int64_t N : {int64_t{1}, int64_t{4096}, int64_t{70000}, int64_t{1} << 20})
        for (int64_t C : {int64_t{1}, int64_t{3}, int64_t{64}, int64_t{2048}, int64_t{196608}})
          for (int64_t HW : {int64_t{1}, int64_t{49}, int64_t{3136}, int64_t{50176}, int64_t{1} << 22})
            for (int sm : {1, 132}) {
              if (N * C * HW > (int64_t{1} << 45)) continue;
              CbamPass p;
              p.dtype = dt, p.N = N, p.C = C, p.HW = HW, p.channels_last = cl, p.sm_count = sm;
              p.x = p.dy = p.g = p.mx = p.a = p.b = p.s = p.cmax = p.dcmean = p.dcmax = dummy;
              p.out = p.sum = p.ext = p.partials = dummy;
              for (CbamReduce kind : {CbamReduce::ChannelPool, CbamReduce::PixelReduce, CbamReduce::ChannelReduce}) {
                CbamPass q = p;
                q.segments = cbam_reduce_segments(q, kind);
                ++n;
                if (cbam_reduce(q, kind, nullptr) != cudaSuccess) ++bad;
              }
              ++n;
              if (cbam_rescale(p, nullptr) != cudaSuccess) ++bad;
              if (cbam_input_grad(p, nullptr) != cudaSuccess) ++bad;
              SePass s;
              s.dtype = dt, s.N = N, s.C = C, s.HW = HW, s.channels_last = cl, s.sm_count = sm;
              s.x = s.dy = s.g = s.a = s.b = s.maxv = dummy;
              s.out = s.sum = s.ext = s.partials = dummy;
              for (bool bwd : {false, true}) {
                SePass q = s;
                q.segments = se_reduce_segments(q, bwd);
                ++n;
                if ((bwd ? se_reduce(q, nullptr) : se_pool(q, nullptr)) != cudaSuccess) ++bad;
              }
              if (se_scale(s, nullptr) != cudaSuccess) ++bad;
              if (se_dx(s, nullptr) != cudaSuccess) ++bad;
              if (cl || HW != 1) continue;  // ECA's excitation sees only N and C
              EcaExcite e;
              e.dtype = dt, e.N = N, e.C = C, e.k = 7, e.sm_count = sm;
              e.w = e.b = e.pooled = e.s = e.saved_logits = dummy;
              e.logits = e.g = e.a = e.partials = e.dw = e.db = dummy;
              n += 2;
              if (eca_excite_forward(e, nullptr) != cudaSuccess) ++bad;
              if (eca_excite_backward(e, nullptr) != cudaSuccess) ++bad;
              for (bool two : {true, false}) {
                if (!two && C > 4096) continue;
                SeExcite x;
                x.dtype = dt, x.N = N, x.C = C, x.rd = two ? std::max<int64_t>(1, C / 16) : C, x.two_layer = two;
                x.sm_count = sm;
                x.w1 = x.b1 = x.w2 = x.b2 = x.pooled = dummy;
                x.hidden = x.logits = x.g = x.partials = dummy;
                ++n;
                if (se_excite_forward(x, nullptr) != cudaSuccess) ++bad;
              }
            }
  for (int64_t N : {int64_t{1}, int64_t{4096}, int64_t{70000}})
    for (int64_t H : {int64_t{1}, int64_t{224}, int64_t{1024}})
      for (int k : {1, 3, 7})
        for (bool light : {false, true}) {
          CbamSpatial sp;
          sp.N = N, sp.H = H, sp.W = H, sp.k = k, sp.light = light, sp.C = 64;
          sp.smap = sp.w = sp.ds = sp.ccnt = dummy;
          sp.partials = sp.z = sp.stats_acc = sp.s = sp.dz = sp.dcmean = sp.dcmax = sp.dgamma = sp.dbeta = sp.wpart = dummy;
          sp.stats = reinterpret_cast<double*>(dummy);
          ++n;
          if (cbam_spatial_gate(sp, nullptr) != cudaSuccess) ++bad;
          if (cbam_spatial_grad(sp, nullptr) != cudaSuccess) ++bad;
        }
  emu::dry_run = false;
  std::printf("launch configurations for big shapes: %s (%ld bad of %ld)\n", bad ? "FAIL" : "ok", bad, n);
  return bad == 0;
}

int main(int argc, char** argv) {
  bool quick = false, only_cbam = false, only_se = false, only_fused = false, only_eca = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    if (!std::strcmp(argv[i], "--cap2")) emu::grid_cap = 2;
    if (!std::strcmp(argv[i], "-v")) g_verbose = 1;
    if (!std::strcmp(argv[i], "--cbam")) only_cbam = true;
    if (!std::strcmp(argv[i], "--se")) only_se = true;
    if (!std::strcmp(argv[i], "--fused")) only_fused = true;
    if (!std::strcmp(argv[i], "--eca")) only_eca = true;
  }
  bool ok = test_conversions();
  ok &= test_launch_configs();
  const bool all = !only_cbam && !only_se && !only_fused && !only_eca;
  if (all || only_cbam) run_cbam_suite(quick);
  if (all || only_se) run_se_suite(quick);
  if (all || only_se || only_eca) run_eca_excite_suite(quick);
  if (all || only_se) run_se_excite_suite(quick);
  if (all || only_fused) run_se_fused_suite(quick);
  std::printf("\ncases %ld, failed cases %ld, element checks %ld, wrong elements %ld, launches %llu, blocks %llu\n",
              g_stats.cases, g_stats.failed_cases, g_stats.checks, g_stats.failures, emu::launches, emu::blocks_run);
  const size_t used = emu::stack_high_water();
  if (g_verbose || !quick) {
    emu::print_coverage();
    std::printf("fiber stacks: %zu of %zu bytes used at most\n", used, emu::stack_size());
  }
  if (2 * used > emu::stack_size()) {
    std::printf("FAIL: a fiber used %zu of its %zu-byte stack: raise kStack (shim/emu.cpp)\n", used, emu::stack_size());
    ok = false;
  }
  ok &= g_stats.failed_cases == 0;
  std::printf("%s\n", ok ? "ALL PASSED" : "SOME CHECKS FAILED");
  return ok ? 0 : 1;
}
