// Timings of the SE/ECA CPU big-tensor passes (forward_pass, backward_pass of
// csrc/cpu/se_cpu_kernels.h, AVX2 build) at N=8 in float32 (or float16,
// bfloat16: the last argument): the pool pass alone,
// the rescale alone, both, and the dx pass, against a memcpy of x; cold (the
// inputs rotated through 1 GiB) or warm (one input, cache-resident). Prints the
// best and the median of 600 calls in µs. Built and run by ab.sh.
//
//   passes C HW nchw|cl cold|warm [threads] [float|half|bf16]
#include "csrc/cpu/se_kernel_avx2.cpp"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

using namespace fused_attn::cpu;

template <typename T>
int run(int argc, char** argv, const char* dtype) {
  const int64_t N = 8, C = std::atoll(argv[1]), HW = std::atoll(argv[2]);
  const bool cl = std::string(argv[3]) == "cl", warm = std::string(argv[4]) == "warm";
  const int threads = argc > 5 ? std::atoi(argv[5]) : 2;
  at::set_num_threads(threads);
  const int64_t n = N * C * HW;
  const int64_t copies = warm ? 1 : std::max<int64_t>(4, (int64_t{1} << 30) / (n * int64_t(sizeof(T))));
  std::vector<std::vector<T>> xs(copies, std::vector<T>(n)), ys(copies, std::vector<T>(n, T(1.f)));
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  for (auto& v : xs[0]) v = T(normal(gen));
  for (auto& v : xs) v = xs[0];
  std::vector<float> pooled(N * C), gate(N * C, 0.7f), coef(N * C, 0.01f);
  auto time = [&](auto f) {
    std::vector<double> ts;
    for (int64_t r = 0; r < 600; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      f(r % copies);
      ts.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ts.begin(), ts.end());
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.0f/%.0f", ts[0], ts[ts.size() / 2]);
    return std::string(buf);
  };
  auto pool = [&](int64_t i) {
    avx2::forward_pass<T>(ScaleJob<T>{}, PoolJob<T>{xs[i].data(), N, pooled.data(), nullptr}, C, HW, cl, false);
  };
  auto scale = [&](int64_t i) {
    avx2::forward_pass<T>(ScaleJob<T>{xs[i].data(), ys[i].data(), gate.data(), N}, PoolJob<T>{}, C, HW, cl, false);
  };
  const std::string t_copy = time([&](int64_t i) {
    at::parallel_for(0, n, 1 << 16, [&](int64_t a, int64_t b) { std::memcpy(ys[i].data() + a, xs[i].data() + a, (b - a) * sizeof(T)); });
  });
  const std::string t_pool = time(pool), t_scale = time(scale);
  const std::string t_both = time([&](int64_t i) { pool(i); scale(i); });
  const std::string t_dx = time([&](int64_t i) {
    avx2::backward_pass<T>(DxJob<T>{xs[i].data(), xs[i].data(), ys[i].data(), gate.data(), coef.data(), nullptr,
                                            nullptr, N},
                               ReduceJob<T>{}, C, HW, cl, false);
  });
  std::printf("passes %s %s %s %dt 8x%ldx%ld: memcpy %s  pool %s  rescale %s  pool+rescale %s  dx %s  (us, best/median of 600)\n",
              dtype, cl ? "channels_last" : "nchw", warm ? "warm" : "cold", threads, C, HW, t_copy.c_str(), t_pool.c_str(),
              t_scale.c_str(), t_both.c_str(), t_dx.c_str());
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 5) return 2;
  const std::string dtype = argc > 6 ? argv[6] : "float";
  if (dtype == "float") return run<float>(argc, argv, "float32");
  if (dtype == "half") return run<c10::Half>(argc, argv, "float16");
  if (dtype == "bf16") return run<c10::BFloat16>(argc, argv, "bfloat16");
  return 2;
}
