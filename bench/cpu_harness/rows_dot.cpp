// One-thread timings of the CPU MLP products (csrc/cpu/cbam_cpu_kernels.h, AVX2
// build) at the SE/CBAM excitation shapes. rows_dot, the forward: fc1 = [rd, C]
// against 2·nb pooled rows, fc2 = [C, rd] against nb hidden rows. rows_times,
// the backward (as CBAM's at N = nb): dh = da [nb, C]·W2 [C, rd],
// dpool = dpre [2nb, rd]·W1 [rd, C], dW2 = daᵀ·h ([C, rd], nb terms),
// dW1 = dpreᵀ·pooled ([rd, C], 2nb terms). Prints the best of 300 calls and
// writes every output to $DUMP (if set) so two builds can be compared bitwise.
// Built and run by ab.sh against the sources of two commits.
#include "csrc/cpu/cbam_kernel_avx2.cpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <tuple>

using fused_attn::cpu::avx2::rows_dot;
using fused_attn::cpu::avx2::rows_times;

// With a sweep, every call first writes 64 MiB elsewhere, so the weights come
// from DRAM as they do in a network (or a benchmark rotating its inputs);
// without, they stay in L2.
std::vector<float> junk;
template <class F>
double best_us(F f, int reps = 300, bool sweep = false) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    if (sweep)
      for (size_t i = 0; i < junk.size(); i += 16) junk[i] += 1.f;
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

int main() {
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  std::vector<float> dump;
  for (auto [C, rd, nb] : {std::tuple{2048, 128, 8}, std::tuple{1024, 64, 8}, std::tuple{256, 16, 8},
                           std::tuple{1000, 62, 3}, std::tuple{517, 33, 5}, std::tuple{7, 3, 1}}) {
    std::vector<float> w1(rd * C), w2(C * rd), in(2 * nb * C), h(2 * nb * rd), out(nb * C), b2(C);
    for (auto* v : {&w1, &w2, &in, &h, &b2})
      for (auto& e : *v) e = normal(gen);
    const double t1 = best_us([&] { rows_dot<float>(w1.data(), in.data(), C, 0, rd, 2 * nb, nullptr, 1.f, h.data(), rd); });
    const double t2 = best_us([&] { rows_dot<float>(w2.data(), h.data(), rd, 0, C, nb, b2.data(), 2.f, out.data(), C); });
    dump.insert(dump.end(), h.begin(), h.end());
    dump.insert(dump.end(), out.begin(), out.end());
    std::printf("rows_dot C=%d rd=%d rows=%d: fc1 %.1f us, fc2 %.1f us (one thread, best of 300)\n", C, rd, 2 * nb, t1, t2);
#ifdef FUSED_ATTN_ROWS_DOT_16BIT
    {  // the same products with the weights in bfloat16, widened as they load (not in the dump: older sources lack
       // them), checked bitwise against the float path on the same values
      std::vector<c10::BFloat16> w1b(w1.begin(), w1.end()), w2b(w2.begin(), w2.end());
      std::vector<float> w1f(w1b.begin(), w1b.end()), w2f(w2b.begin(), w2b.end());
      std::vector<float> hb(h.size()), outb(out.size()), hf(h.size()), outf(out.size());
      const double tb1 = best_us([&] { rows_dot<float, c10::BFloat16>(w1b.data(), in.data(), C, 0, rd, 2 * nb, nullptr, 1.f, hb.data(), rd); });
      const double tb2 = best_us([&] { rows_dot<float, c10::BFloat16>(w2b.data(), h.data(), rd, 0, C, nb, b2.data(), 2.f, outb.data(), C); });
      rows_dot<float>(w1f.data(), in.data(), C, 0, rd, 2 * nb, nullptr, 1.f, hf.data(), rd);
      rows_dot<float>(w2f.data(), h.data(), rd, 0, C, nb, b2.data(), 2.f, outf.data(), C);
      const bool same = std::memcmp(hb.data(), hf.data(), hb.size() * sizeof(float)) == 0 &&
                        std::memcmp(outb.data(), outf.data(), outb.size() * sizeof(float)) == 0;
      std::printf("rows_dot C=%d rd=%d rows=%d, bf16 weights: fc1 %.1f us, fc2 %.1f us (one thread, best of 300); %s\n",
                  C, rd, 2 * nb, tb1, tb2, same ? "bitwise equal to float weights of the same values" : "DIFFER from float weights");
    }
#endif
    if (C == 2048) {
      junk.assign(16 << 20, 0.f);
      const double c1 = best_us([&] { rows_dot<float>(w1.data(), in.data(), C, 0, rd, 2 * nb, nullptr, 1.f, h.data(), rd); }, 100, true);
      const double c2 = best_us([&] { rows_dot<float>(w2.data(), h.data(), rd, 0, C, nb, b2.data(), 2.f, out.data(), C); }, 100, true);
      junk.clear();
      junk.shrink_to_fit();
      std::printf("rows_dot C=%d rd=%d rows=%d, weights from DRAM: fc1 %.1f us, fc2 %.1f us (one thread, best of 100)\n",
                  C, rd, 2 * nb, c1, c2);
    }
    // The backward's products, a [R, T] (ar = T, at = 1) or aᵀ (a [T, R]: ar = 1, at = R).
    std::vector<float> da(nb * C), dpre(2 * nb * rd), dh(nb * rd), dpool(2 * nb * C), dw2(C * rd), dw1(rd * C);
    for (auto* v : {&da, &dpre})
      for (auto& e : *v) e = normal(gen);
    const double t3 = best_us([&] { rows_times<float>(da.data(), C, 1, w2.data(), rd, nb, C, 0, rd, dh.data(), rd); });
    const double t4 = best_us([&] { rows_times<float>(dpre.data(), rd, 1, w1.data(), C, 2 * nb, rd, 0, C, dpool.data(), C); });
    const double t5 = best_us([&] { rows_times<float>(da.data(), 1, C, h.data(), rd, C, nb, 0, rd, dw2.data(), rd); });
    const double t6 = best_us([&] { rows_times<float>(dpre.data(), 1, rd, in.data(), C, rd, 2 * nb, 0, C, dw1.data(), C); });
    for (auto* v : {&dh, &dpool, &dw2, &dw1}) dump.insert(dump.end(), v->begin(), v->end());
    std::printf("rows_times C=%d rd=%d N=%d: dh %.1f us, dpool %.1f us, dW2 %.1f us, dW1 %.1f us (one thread, best of 300)\n",
                C, rd, nb, t3, t4, t5, t6);
  }
  if (const char* path = std::getenv("DUMP")) {
    FILE* f = std::fopen(path, "wb");
    std::fwrite(dump.data(), sizeof(float), dump.size(), f);
    std::fclose(f);
  }
}
