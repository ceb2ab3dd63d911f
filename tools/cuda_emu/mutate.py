#!/usr/bin/env python3
"""Mutation check of the emulation: each mutant plants one bug in a copy of the
rewritten sources (after run.sh has built them) and must be caught.

    python3 tools/cuda_emu/mutate.py [NAME ...]
    python3 tools/cuda_emu/mutate.py --check    # only that every pattern is still found (run.sh)

Builds each under $BUILD/mut/NAME and runs the quick suite (with --cap2 for the
mutants only the grid-stride loops reach); prints CAUGHT or NOT CAUGHT.
The se_fused_* mutants break se_fused.cu's cluster barriers, a distributed
shared-memory rank and the wait for the asynchronous copies.
"""
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.abspath(os.environ.get("EMU_BUILD", os.path.join(HERE, "..", "..", "build", "cuda_emu")))
M = {
  # name: (file, old, new, binary, args)
  "cbam_shfl_short": ("cbam_kernels.cu", "for (int offset = 16; offset > 0; offset >>= 1) {\n      const A s = __shfl_xor_sync(0xffffffffu, acc.sum, offset);",
                      "for (int offset = 8; offset > 0; offset >>= 1) {\n      const A s = __shfl_xor_sync(0xffffffffu, acc.sum, offset);", "emu_test", ["--quick", "--cbam"]),
  "cbam_cols_no_barrier": ("cbam_kernels.cu", "      part_ext[ty][tx * V + k] = acc[k].ext;\n    }\n    __syncthreads();",
                           "      part_ext[ty][tx * V + k] = acc[k].ext;\n    }\n", "emu_test", ["--quick", "--cbam"]),
  "cbam_partials_index": ("cbam_kernels.cu", "partials[(p.segments + seg) * rows + row] = total.ext;",
                          "partials[(p.segments + seg - 1) * rows + row] = total.ext;", "emu_test", ["--quick", "--cbam"]),
  "cbam_seg_len": ("cbam_kernels.cu", "const int64_t seg_len = ceil_div(L, p.segments);", "const int64_t seg_len = L / p.segments;",
                   "emu_test", ["--quick", "--cbam"]),
  "cbam_rows_wpr_merge": ("cbam_kernels.cu", "for (int w = 1; w < wpr; ++w)", "for (int w = 1; w < wpr - 1; ++w)", "emu_test", ["--quick", "--cbam"]),
  "cbam_tail_barrier_cap2": ("cbam_kernels.cu", "    __syncthreads();  // the partials are rewritten for the next sample", "",
                             "emu_test", ["--quick", "--cap2", "--cbam"]),
  "cbam_wgrad_tree": ("cbam_kernels.cu", "if (static_cast<int>(threadIdx.x) < width) buf[threadIdx.x] += buf[threadIdx.x + width];\n    __syncthreads();",
                      "if (static_cast<int>(threadIdx.x) < width) buf[threadIdx.x] += buf[threadIdx.x + width];", "emu_test", ["--quick", "--cbam"]),
  "cbam_spatial_tree_barrier": ("cbam_kernels.cu", "      sn[t] = r.n, smean[t] = r.mean, sm2[t] = r.m2;\n    }\n    __syncthreads();",
                                "      sn[t] = r.n, smean[t] = r.mean, sm2[t] = r.m2;\n    }\n", "emu_test", ["--quick", "--cbam"]),
  "cbam_spatial_chan_merge": ("cbam_kernels.cu", "a.m2 + b.m2 + d * d * a.n * fb", "a.m2 + b.m2 + d * d * fb", "emu_test", ["--quick", "--cbam"]),
  "cbam_spatial_map_order": ("cbam_kernels.cu", "((ci == 0) != sp.max_first)", "((ci == 0) == sp.max_first)", "emu_test", ["--quick", "--cbam"]),
  "cbam_spatial_parts": ("cbam_kernels.cu", "for (int64_t b = threadIdx.x; b < parts; b += kSpatialThreads)",
                         "for (int64_t b = threadIdx.x; b < parts - 1; b += kSpatialThreads)", "emu_test", ["--quick", "--cbam"]),
  "cbam_spatial_running_swapped": ("cbam_kernels.cu", "var = param_as<double>(sp.running_var, sp.running_dtype, 0);",
                                   "var = param_as<double>(sp.running_mean, sp.running_dtype, 0);", "emu_test", ["--quick", "--cbam"]),
  "cbam_spatial_running_half_as_bf16": ("cbam_kernels.cu", "case DType::F16: return static_cast<A>(to_acc(static_cast<const __half*>(p)[i]));",
                                        "case DType::F16: return static_cast<A>(to_acc(static_cast<const __nv_bfloat16*>(p)[i]));",
                                        "emu_test", ["--quick", "--cbam"]),
  # the backward's spatial gate (cbam_spatial_grad)
  "cbam_grad_tree_barrier": ("cbam_kernels.cu", "    if (t < width) sa[t] += sa[t + width], sb[t] += sb[t + width];\n    __syncthreads();",
                             "    if (t < width) sa[t] += sa[t + width], sb[t] += sb[t + width];\n", "emu_test", ["--quick", "--cbam"]),
  "cbam_grad_parts": ("cbam_kernels.cu", "for (int64_t b = threadIdx.x; b < parts; b += kSpatialThreads) dbeta",
                      "for (int64_t b = threadIdx.x; b < parts - 1; b += kSpatialThreads) dbeta", "emu_test", ["--quick", "--cbam"]),
  "cbam_grad_batch_mean": ("cbam_kernels.cu", "d = sub_rn(sub_rn(d, mean_dbn), mul_rn(zhat, mean_dbn_zhat));",
                           "d = sub_rn(d, mul_rn(zhat, mean_dbn_zhat));", "emu_test", ["--quick", "--cbam"]),
  "cbam_grad_unflipped": ("cbam_kernels.cu", "acc += wk[(last - i) * sp.k + (last - j)] * src[yy * sp.W + xx];",
                          "acc += wk[i * sp.k + j] * src[yy * sp.W + xx];", "emu_test", ["--quick", "--cbam"]),
  "cbam_grad_map_order": ("cbam_kernels.cu", "dmean = sp.max_first ? dm1 : dm0;", "dmean = sp.max_first ? dm0 : dm1;",
                          "emu_test", ["--quick", "--cbam"]),
  "cbam_grad_hard_window": ("cbam_kernels.cu", "(bo > A(-3) && bo < A(3))", "(bo >= A(-3) && bo < A(3) && bo > A(-2.5))",
                            "emu_test", ["--quick", "--cbam"]),
  "cbam_channel_gate_stride": ("cbam_kernels.cu", "i < count; i += stride)\n    g[i] = gate_fwd(gate, z[i]);",
                               "i < count; i += stride + 1)\n    g[i] = gate_fwd(gate, z[i]);", "emu_test", ["--quick", "--cbam"]),
  "cbam_param_bf16_as_half": ("cbam_kernels.cu", "case DType::BF16: return static_cast<A>(to_acc(static_cast<const __nv_bfloat16*>(p)[i]));",
                              "case DType::BF16: return static_cast<A>(to_acc(static_cast<const __half*>(p)[i]));",
                              "emu_test", ["--quick", "--cbam"]),
  "cbam_stage_weights_one_map": ("cbam_kernels.cu", "const int n = (sp.light ? 1 : 2) * sp.k * sp.k;",
                               "const int n = sp.k * sp.k;", "emu_test", ["--quick", "--cbam"]),
  # the forward's cooperative excitation (se_forward.cu): its phase barriers, its tiles, its fallback's combine
  "se_coop_no_sync_after_combine": ("se_forward.cu", "      combine_rows<A, false, false>(c.pool, first, stride);\n    }\n    grid.sync();",
                                    "      combine_rows<A, false, false>(c.pool, first, stride);\n    }\n", "emu_test", ["--quick", "--se"]),
  "se_coop_no_sync_between_layers": ("se_forward.cu", "  if (c.two_layer) {\n    grid.sync();", "  if (c.two_layer) {\n",
                                     "emu_test", ["--quick", "--se"]),
  "se_coop_tile_z": ("se_forward.cu", "bz = b / (c.gx1 * c.gy1);", "bz = (b / (c.gx1 * c.gy1)) % 2;", "emu_test", ["--quick", "--se"]),
  "se_coop_refusal_not_cleared": ("se_forward.cu", "      (void)cudaGetLastError();\n    }\n  }\n  if (combine) {", "    }\n  }\n  if (combine) {",
                                  "emu_test", ["--quick", "--se"]),
  "se_coop_fallback_no_combine": ("se_forward.cu", "  if (combine) {\n    if (pool.ext != nullptr) {",
                                  "  if (false) {\n    if (pool.ext != nullptr) {", "emu_test", ["--quick", "--se"]),
  # ECA's forward excitation combining the pool's segments itself (se_kernels.cuh)
  "eca_deferred_pooled_not_written": ("se_kernels.cuh", "    if (S > 1) static_cast<A*>(p.pooled_out)[i] = own;\n", "",
                                      "emu_test", ["--quick", "--se"]),
  "eca_deferred_sum_not_mean": ("se_kernels.cuh", "segments_sum(parts, S, r) / static_cast<A>(p.HW);", "segments_sum(parts, S, r);",
                                "emu_test", ["--quick", "--se"]),
  # the backward excitations reading the Σ dy·x reduction's segments themselves (segments_sum)
  "se_bwd_deferred_segments_short": ("se_kernels.cuh", "  for (int64_t s = 1; s < S; ++s) v += part[r * S + s];",
                                     "  for (int64_t s = 1; s < S - 1; ++s) v += part[r * S + s];", "emu_test", ["--quick", "--se"]),
  "se_bwd_deferred_cnt_as_sums": ("se_kernels.cuh", "segments_sum(static_cast<const A*>(q.red) + q.red_rows * q.red_segs, q.red_segs, n * J + j)",
                                  "segments_sum(static_cast<const A*>(q.red), q.red_segs, n * J + j)", "emu_test", ["--quick", "--se"]),
  "se_cols_merge": ("se_kernels.cuh", "for (int j = 1; j < kColsY; ++j)", "for (int j = 1; j < kColsY - 1; ++j)", "emu_test", ["--quick", "--se"]),
  "se_vec_oob": ("se_kernels.cuh", "  if (row % kVec<T> != 0) return false;", "", "emu_test", ["--quick", "--se"]),
  # se_fused.cu (clusters, distributed shared memory, asynchronous copies)
  "se_fused_gather_no_sync": ("se_fused.cu", "    if (idx % cb < cbn) part[idx] = own[idx];\n  }\n  cluster.sync();",
                              "    if (idx % cb < cbn) part[idx] = own[idx];\n  }\n", "emu_test", ["--quick", "--fused"]),
  "se_fused_gather_early_exit": ("se_fused.cu", "    vec[idx] = cluster.map_shared_rank(part, r)[g * cb + (c - r * cb)];\n  }\n  cluster.sync();",
                                 "    vec[idx] = cluster.map_shared_rank(part, r)[g * cb + (c - r * cb)];\n  }\n", "emu_test", ["--quick", "--fused"]),
  "se_fused_hidden_rank": ("se_fused.cu", "h += cluster.map_shared_rank(part, r)[idx];", "h += cluster.map_shared_rank(part, rank)[idx];",
                           "emu_test", ["--quick", "--fused"]),
  "se_fused_fwd_hidden_sync": ("se_fused.cu", "    cluster.sync();  // every block has read the partials it needs; part may be left", "",
                        "emu_test", ["--quick", "--fused"]),
  "se_fused_eca_early_exit": ("se_fused.cu", "    cluster.sync();  // block 0 has read every block's partials", "",
                              "emu_test", ["--quick", "--fused"]),
  "se_fused_no_wait": ("se_fused.cu", "  __pipeline_wait_prior(0);\n", "", "emu_test", ["--quick", "--fused"]),
  # ECA's two-phase excitation (eca_excite_* in se_kernels.cuh)
  "eca_excite_unflipped": ("se_kernels.cuh", "if (j < k) dp += wt[j] * dz_tile[t - j + 2 * pad];",
                           "if (j < k) dp += wt[j] * dz_tile[t + j];", "emu_test", ["--quick", "--eca"]),
  "eca_excite_short_halo": ("se_kernels.cuh", "for (int64_t i = t; i < kExciteThreads + 2 * pad; i += kExciteThreads) {",
                            "for (int64_t i = t; i < kExciteThreads + pad; i += kExciteThreads) {", "emu_test", ["--quick", "--eca"]),
  "eca_excite_wrap": ("se_kernels.cuh", "cc = p.circular ? ((cc % C) + C) % C : -1;", "cc = p.circular ? (cc + C) % C : -1;",
                      "emu_test", ["--quick", "--eca"]),
  "eca_excite_tile_barrier": ("se_kernels.cuh", "    __syncthreads();  // dz_tile is rewritten for the next sample", "",
                              "emu_test", ["--quick", "--eca"]),
  "eca_excite_sum_barrier": ("se_kernels.cuh", "    red[j][q * 16] = v;\n  }\n  __syncthreads();", "    red[j][q * 16] = v;\n  }\n",
                             "emu_test", ["--quick", "--eca"]),
  "eca_excite_parts": ("se_kernels.cuh", "for (int64_t q = t; q < parts; q += kExciteThreads)",
                       "for (int64_t q = t; q < parts - 1; q += kExciteThreads)", "emu_test", ["--quick", "--eca"]),
  # SE's two-phase excitation (se_linear_kernel in se_kernels.cuh)
  "se_excite_parts": ("se_kernels.cuh", "for (int64_t sp = 1; sp < splits; ++sp)", "for (int64_t sp = 1; sp < splits - 1; ++sp)",
                      "emu_test", ["--quick", "--se"]),
  "se_excite_restage_barrier": ("se_kernels.cuh", "      __syncthreads();  // the tiles are restaged for the next chunk", "",
                                "emu_test", ["--quick", "--se"]),
  "se_excite_split_end": ("se_kernels.cuh", "const int64_t ke = kb + q.k_per_split < K ? kb + q.k_per_split : K;",
                          "const int64_t ke = K;", "emu_test", ["--quick", "--se"]),
  "se_excite_hidden_bias": ("se_kernels.cuh", "if (q.in_bias != nullptr) h += to_acc(static_cast<const T*>(q.in_bias)[k]);\n              if (saves)",
                            "if (saves)", "emu_test", ["--quick", "--se"]),
  # ...and its backward (the layers transposed, se_wgrad_kernel)
  "se_excite_bwd_untransposed": ("se_kernels.cuh", "to_acc(WT ? w[k * J + j] : w[j * K + k])", "to_acc(w[j * K + k])",
                                 "emu_test", ["--quick", "--se"]),
  "se_excite_bwd_saved_gate": ("se_kernels.cuh", "static_cast<A*>(q.save2)[at] = g;", "static_cast<A*>(q.save2)[at] = z;",
                               "emu_test", ["--quick", "--se"]),
  "se_excite_bwd_no_act_grad": ("se_kernels.cuh", "v = act_bwd(q.act, h, pre);", "v = h;", "emu_test", ["--quick", "--se"]),
  "se_excite_bwd_spread_b": ("se_kernels.cuh", "acc[m] * A(0.5) / c;", "acc[m] / c;",
                             "emu_test", ["--quick", "--se"]),
  "cbam_mlp_bias_once": ("se_kernels.cuh", "static_cast<A>(q.bias_scale) * to_acc(", "to_acc(", "emu_test", ["--quick", "--se"]),
  "cbam_mlp_pair_row": ("se_kernels.cuh", "v += act_fwd(q.act, h2);", "v += act_fwd(q.act, h);", "emu_test", ["--quick", "--se"]),
  "cbam_mlp_light_max": ("se_kernels.cuh", "in[N * K + at] * A(0.5)", "in[at] * A(0.5)", "emu_test", ["--quick", "--se"]),
  "se_wgrad_no_ones_row": ("se_kernels.cuh", "} else if (r == jb.Rn) {\n            v = jb.l_pair ? A(2) : A(1);", "} else if (r == jb.Rn) {\n            v = A(0);",
                           "emu_test", ["--quick", "--se"]),
  "se_wgrad_second_job": ("se_kernels.cuh", "const int64_t local = second ? tile - q.a.tiles : tile;", "const int64_t local = tile;",
                          "emu_test", ["--quick", "--se"]),
  "se_wgrad_transpose_barrier": ("se_kernels.cuh", "    if (jb.transposed) {\n      __syncthreads();", "    if (jb.transposed) {\n",
                                 "emu_test", ["--quick", "--se"]),
  # CBAM's MLP backward (cbam_mlp_backward: the pairs of rows, the recomputed fc1)
  "cbam_mlp_bwd_shared_dh": ("se_kernels.cuh", "parts_sum(in, q.in_splits, rows, n < rows ? n : n - rows)",
                             "parts_sum(in, q.in_splits, rows, n < rows ? n : 0)", "emu_test", ["--quick", "--se"]),
  "cbam_mlp_bwd_spread_max": ("se_kernels.cuh", "static_cast<A*>(q.g_out)[at] = acc[m] / static_cast<const A*>(q.cnt)[at];",
                              "static_cast<A*>(q.g_out)[at] = acc[m] * A(0.5) / static_cast<const A*>(q.cnt)[at];",
                              "emu_test", ["--quick", "--se"]),
  "cbam_mlp_bwd_bias_once": ("se_kernels.cuh", "v = jb.l_pair ? A(2) : A(1);", "v = A(1);", "emu_test", ["--quick", "--se"]),
  "cbam_mlp_bwd_one_pool": ("se_kernels.cuh", "if (jb.l_pair) v += act_fwd(q.act, L[(N + n) * jb.Rn + r]);", "",
                            "emu_test", ["--quick", "--se"]),
  "cbam_mlp_bwd_light_input": ("se_kernels.cuh", "R[(N + n) * jb.Cn + col] * A(0.5)", "R[n * jb.Cn + col] * A(0.5)",
                               "emu_test", ["--quick", "--se"]),
  "cbam_mlp_bwd_pre_bias": ("se_kernels.cuh", "if (q.in_bias != nullptr) pre += to_acc(static_cast<const T*>(q.in_bias)[k]);", "",
                            "emu_test", ["--quick", "--se"]),
  "cbam_mlp_bwd_pre_parts": ("se_kernels.cuh", "pre = parts_sum(in2, q.in2_splits, N, n);", "pre = parts_sum(in2, 1, N, n);",
                             "emu_test", ["--quick", "--se"]),
  # the single launch's gradient sums (grad_sum_kernel)
  "grad_sum_last_group": ("se_kernels.cuh", "for (int64_t g = 1; g < q.groups; ++g) s += src[g * q.len[j]];",
                          "for (int64_t g = 1; g < q.groups - 1; ++g) s += src[g * q.len[j]];", "emu_test", ["--quick", "--se"]),
  "grad_sum_stride": ("se_kernels.cuh", "s += src[g * q.len[j]];", "s += src[g * q.len[0]];", "emu_test", ["--quick", "--se"]),
  "se_tail_barrier_cap2": ("se_kernels.cuh", "    __syncthreads();  // the partials are rewritten for the next sample", "",
                           "emu_test", ["--quick", "--cap2", "--se"]),
}
check_only = sys.argv[1:] == ["--check"]
names = list(M) if check_only else (sys.argv[1:] or list(M))
# Every pattern checked before the first build: a stale one (the kernels
# changed under it) is reported at once, not after the mutants before it ran.
sources = {f: open(os.path.join(BUILD, "src", f)).read() for f in {M[n][0] for n in names}}
stale = [n for n in names if M[n][1] not in sources[M[n][0]]]
if stale:
    sys.exit("pattern not found (the kernels changed; update these mutants): " + " ".join(stale))
if check_only:
    print(f"mutate.py: all {len(names)} mutants' patterns found")
    sys.exit(0)
missed = 0
for name in names:
    f, old, new, binary, args = M[name]
    d = os.path.join(BUILD, "mut", name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(os.path.join(BUILD, "src"), os.path.join(d, "src"))
    # The built objects too, times kept: make recompiles only what the mutant touches.
    for o in os.listdir(BUILD):
        if o.endswith(".o"):
            shutil.copy2(os.path.join(BUILD, o), d)
    p = os.path.join(d, "src", f)
    open(p, "w").write(open(p).read().replace(old, new))
    r = subprocess.run(["make", "-s", "-j2", "-C", HERE, f"BUILD={d}", os.path.join(d, binary)],
                       capture_output=True, text=True)
    if r.returncode:
        print(name, "BUILD FAILED", r.stderr[-2000:])
        missed += 1
        continue
    env = dict(os.environ, ASAN_OPTIONS="detect_stack_use_after_return=0:detect_leaks=0", UBSAN_OPTIONS="halt_on_error=1")
    r = subprocess.run([os.path.join(d, binary)] + args, capture_output=True, text=True, env=env, timeout=1500)
    out = r.stdout + r.stderr
    caught = r.returncode != 0
    missed += not caught
    first = next((l for l in out.splitlines()
                  if "MISMATCH" in l or "ERROR" in l or "EMU FAILURE" in l or "runtime error" in l), "")
    print(f"{name}: {'CAUGHT' if caught else 'NOT CAUGHT'} (rc={r.returncode}) {first.strip()[:200]}", flush=True)
sys.exit(1 if missed else 0)
