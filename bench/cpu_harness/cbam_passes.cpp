// One-thread timings of CBAM's CPU big-tensor passes (csrc/cpu/cbam_cpu_kernels.h,
// AVX2 build) over N=8 float32 samples held in cache (warm): the forward's
// spatial pool, channel pool and rescale, the backward's spatial grad, channel
// grad and dx, against a memcpy of x. warm: one x (and dy), cache-resident
// when it fits; cold: copies rotated through 1 GiB, so each call reads them
// from DRAM. Prints the best and the median of $REPS (600) calls in µs, and
// writes every output to $DUMP (if set) so two builds can be compared
// bitwise. Built and run by ab.sh.
//
//   cbam_passes C HW nchw|cl [warm|cold]
#include "csrc/cpu/cbam_kernel_avx2.cpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

using namespace fused_attn::cpu;
namespace k = fused_attn::cpu::avx2;

int main(int argc, char** argv) {
  if (argc < 4) return 2;
  const int64_t N = 8, C = std::atoll(argv[1]), HW = std::atoll(argv[2]);
  const bool cl = std::string(argv[3]) == "cl";
  const bool cold = argc > 4 && std::string(argv[4]) == "cold";
  const int reps = std::getenv("REPS") ? std::atoi(std::getenv("REPS")) : 600;
  const int64_t n = N * C * HW;
  const int64_t copies = cold ? std::max<int64_t>(4, (int64_t{1} << 30) / (n * 4)) : 1;
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> unit(0.05f, 1.f);
  std::vector<float> x(n * copies), dy(n * copies), y(n, 1.f), dx(n, 1.f);
  for (int64_t i = 0; i < n; ++i) x[i] = normal(gen);
  for (int64_t i = 0; i < n; ++i) dy[i] = normal(gen);
  for (int64_t c = 1; c < copies; ++c) {
    std::copy(x.begin(), x.begin() + n, x.begin() + c * n);
    std::copy(dy.begin(), dy.begin() + n, dy.begin() + c * n);
  }
  int64_t copy = 0;  // the copy the passes read this call
  auto X = [&](int64_t i) { return x.data() + copy * n + i * C * HW; };
  auto DY = [&](int64_t i) { return dy.data() + copy * n + i * C * HW; };
  std::vector<float> g(C), s(HW), mean(N * C), mx(N * C), cmean(N * HW), cmax(N * HW), ds(N * HW), cc(N * HW),
      dg(N * C), cnt(N * C), share(C), tie(C), dcm(HW), dcx(HW);
  for (auto* v : {&g, &s, &share, &tie, &dcm, &dcx})
    for (auto& e : *v) e = unit(gen);
  const int64_t slice = C * HW;
  auto time = [&](auto f) {
    std::vector<double> ts;
    for (int r = 0; r < reps; ++r) {
      copy = r % copies;
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < N; ++i) f(i);
      ts.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ts.begin(), ts.end());
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.0f/%.0f", ts[0], ts[ts.size() / 2]);
    copy = 0;
    return std::string(buf);
  };
  const std::string t_copy = time([&](int64_t i) { std::memcpy(y.data() + i * slice, X(i), slice * 4); });
  const std::string t_sp = time([&](int64_t i) {
    k::cbam_spatial_pool<float>(X(i), C, HW, cl, mean.data() + i * C, mx.data() + i * C);
  });
  const std::string t_cp = time([&](int64_t i) {
    k::cbam_channel_pool<float>(X(i), g.data(), C, HW, cl, cmean.data() + i * HW, cmax.data() + i * HW);
  });
  const std::string t_rs = time([&](int64_t i) {
    k::cbam_rescale<float>(X(i), g.data(), s.data(), C, HW, cl, false, y.data() + i * slice);
  });
  const std::string t_sg = time([&](int64_t i) {
    k::cbam_spatial_grad<float>(DY(i), X(i), g.data(), cmax.data() + i * HW, C, HW, cl,
                                ds.data() + i * HW, cc.data() + i * HW);
  });
  auto grad = [&](int64_t i) {
    SpatialGrad<float> sg;
    sg.s = s.data();
    sg.dcmean = dcm.data();
    sg.dcmax = dcx.data();
    sg.cmax = cmax.data() + i * HW;
    return sg;
  };
  const std::string t_cg = time([&](int64_t i) {
    k::cbam_channel_grad<float>(DY(i), X(i), g.data(), grad(i), mx.data() + i * C, C,
                                HW, cl, dg.data() + i * C, cnt.data() + i * C);
  });
  const std::string t_dx = time([&](int64_t i) {
    k::cbam_dx<float>(DY(i), X(i), g.data(), grad(i), mx.data() + i * C, share.data(),
                      tie.data(), C, HW, cl, false, dx.data() + i * slice);
  });
  if (const char* path = std::getenv("DUMP")) {
    FILE* f = std::fopen(path, "wb");
    for (auto* v : {&mean, &mx, &cmean, &cmax, &y, &ds, &cc, &dg, &cnt, &dx}) std::fwrite(v->data(), 4, v->size(), f);
    std::fclose(f);
  }
  std::printf(
      "cbam_passes %s %s 1t 8x%ldx%ld: memcpy %s  spatial_pool %s  channel_pool %s  rescale %s  spatial_grad %s  "
      "channel_grad %s  dx %s  (us, best/median of %d)\n",
      cl ? "channels_last" : "nchw", cold ? "cold" : "warm", C, HW, t_copy.c_str(), t_sp.c_str(), t_cp.c_str(), t_rs.c_str(), t_sg.c_str(),
      t_cg.c_str(), t_dx.c_str(), reps);
}
