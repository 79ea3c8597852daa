// The selective scan on the CPU, forward and backward, for models/cpu_kernels.py (and, at the end, the mixer's causal
// conv + SiLU, which feeds it): mamba-ssm's semantics,
//
//     d_t = softplus(delta_t + bias),   h_t = exp(d_t A) * h_{t-1} + (d_t u_t) B_t,   y_t = (C_t . h_t + D u_t) * silu(z_t)
//
// fused in one pass, so that no full-size intermediate is written but the pre-gate output the backward needs.
//
// The work is vectorised over channels: a group of W = 16 channels of one batch row (one AVX-512 register of float32)
// steps through time together, each of its N states a W-wide vector, B_t and C_t broadcast. Every operation is then a
// plain vertical one (no horizontal sums on the forward path, no scalar softplus or gate), and a time-major tensor
// (channels contiguous at each step, as a Mamba mixer holds them) is read and written W channels at a time. exp,
// log1p and the sigmoid are polynomials the vectoriser inlines. Only the states at chunk boundaries (every `chunk`
// steps) are kept for the backward, which recomputes a chunk's states from its boundary and runs the reverse
// recursion over it.
//
// Tensors are read and written through their strides ([B, E, L] views of any layout; B and C as [B, L, N] with unit
// stride over N). Threads split the forward by (batch row, channel group) and the backward by batch row: a backward
// task owns its row's dB and dC and its own partial dA, dD and d bias (summed over rows afterwards), so every sum has
// one order whatever the number of threads: a run gives the same bits on 1 or 2 cores.

#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <ATen/Parallel.h>

#include <vector>

#include "vec.h"

namespace mom_cpu {

// GCC tunes most AVX-512 CPUs to 256-bit vectors. The scan's loops are W = 16 float32 lanes, one 512-bit register,
// and ran 10-22% faster as such in each side-by-side run with a mixer's inputs; the conv below was 8% slower in the
// least noisy one, so it keeps the default (benchmarks/bench_kernel_build.py). Where AVX-512 is absent this does
// nothing.
#pragma GCC push_options
#pragma GCC target("prefer-vector-width=512")

// A [B, E, L] tensor read and written through its strides, W channels of one step at a time; the lanes past the last
// channel (a partial group) read as 0 and are not written.
template <typename T>
struct Strided {
  T* p;
  int64_t sb, se, st;
  explicit Strided(const at::Tensor& x) : p(x.data_ptr<T>()), sb(x.stride(0)), se(x.stride(1)), st(x.stride(2)) {}
  void load(int64_t b, int64_t t, int64_t e0, int64_t rows, T* __restrict__ dst) const {
    const T* src = p + b * sb + t * st + e0 * se;
    if (se == 1 && rows == W) {
      for (int64_t i = 0; i < W; ++i) dst[i] = src[i];
      return;
    }
    if (se == 1) {
      std::memcpy(dst, src, rows * sizeof(T));
    } else {
      for (int64_t i = 0; i < rows; ++i) dst[i] = src[i * se];
    }
    std::fill(dst + rows, dst + W, T(0));
  }
  void store(int64_t b, int64_t t, int64_t e0, int64_t rows, const T* __restrict__ src) const {
    T* dst = p + b * sb + t * st + e0 * se;
    if (se == 1 && rows == W) {
      for (int64_t i = 0; i < W; ++i) dst[i] = src[i];
    } else if (se == 1) {
      std::memcpy(dst, src, rows * sizeof(T));
    } else {
      for (int64_t i = 0; i < rows; ++i) dst[i * se] = src[i];
    }
  }
};

struct Options {
  int64_t batch, E, L, N, chunk, groups;  // groups: channel groups of W, the last one possibly partial
  bool has_D, has_z, has_bias, use_softplus;
};

// A per-channel vector (D, bias) as the W lanes of group g; absent ones give `fill`.
template <typename T>
void lanes_of(const T* v, int64_t e0, int64_t rows, T fill, T* __restrict__ dst) {
  for (int64_t i = 0; i < W; ++i) dst[i] = v != nullptr && i < rows ? v[e0 + i] : fill;
}

// A [E, N] as N vectors of W lanes (lanes past the last channel 0: exp(0) = 1 keeps their zero state at zero).
template <typename T>
void transpose_A(const T* A, int64_t e0, int64_t rows, int64_t N, T* __restrict__ dst) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < W; ++i) dst[n * W + i] = i < rows ? A[(e0 + i) * N + n] : T(0);
}

// One step's step sizes from the loaded delta lanes: d = softplus(delta + bias) (or delta + bias), du = d u, and
// sig = d'(delta) (sigmoid(delta + bias), or 1). Branch-free, so that it vectorises.
template <typename T>
inline void step_sizes(const T* __restrict__ u, const T* __restrict__ delta, const T* __restrict__ bias,
                       bool use_softplus, T* __restrict__ dt, T* __restrict__ du, T* __restrict__ sig) {
  if (use_softplus) {
#pragma omp simd
    for (int64_t i = 0; i < W; ++i) {
      const T pre = delta[i] + bias[i], e = fast_exp(-std::abs(pre));  // softplus and sigmoid share exp(-|pre|)
      dt[i] = std::max(pre, T(0)) + fast_log1p(e);
      du[i] = dt[i] * u[i];
      sig[i] = (pre >= T(0) ? T(1) : e) / (T(1) + e);
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < W; ++i) {
      dt[i] = delta[i] + bias[i];
      du[i] = dt[i] * u[i];
      sig[i] = T(1);
    }
  }
}

// The kernels for one state size (16 and 8 are compiled as such; other sizes take NS = 0, N read at run time).
template <typename T, int NS>
struct Scan {
  // states: [chunks, B, groups, N, W]; ypre (the pre-gate output): [B, groups, L, W].
  static void forward(const Options& o, const Strided<T>& u, const Strided<T>& delta, const Strided<T>& z,
                      const T* __restrict__ A, const at::Tensor& Bt_, const at::Tensor& Ct_, const T* D,
                      const T* bias, const Strided<T>& out, T* __restrict__ ypre, T* __restrict__ states) {
    const int64_t N = NS > 0 ? NS : o.N, L = o.L, NW = N * W;
    const T *Bt = Bt_.data_ptr<T>(), *Ct = Ct_.data_ptr<T>();
    const int64_t bb = Bt_.stride(0), bt = Bt_.stride(1), cb = Ct_.stride(0), ct = Ct_.stride(1);
    // Channel groups are independent: any split over threads gives the same bits.
    at::parallel_for(0, o.batch * o.groups, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> h_v(NW), A_v(NW);
      T *__restrict__ h = h_v.data(), *__restrict__ A_g = A_v.data();
      alignas(64) T uu[W], dd[W], zz[W], dt[W], du[W], sig[W], D_g[W], bias_g[W], acc[W], y[W];
      const bool has_z = o.has_z;
      for (int64_t job = begin; job < end; ++job) {
        const int64_t b = job / o.groups, g = job % o.groups, e0 = g * W, rows = std::min(W, o.E - e0);
        transpose_A(A, e0, rows, N, A_g);
        lanes_of(D, e0, rows, T(0), D_g);
        lanes_of(bias, e0, rows, T(0), bias_g);
        std::fill(h, h + NW, T(0));
        T* __restrict__ ypre_g = ypre + job * L * W;
        for (int64_t t = 0; t < L; ++t) {
          if (t % o.chunk == 0) std::copy(h, h + NW, states + ((t / o.chunk) * o.batch * o.groups + job) * NW);
          u.load(b, t, e0, rows, uu);
          delta.load(b, t, e0, rows, dd);
          step_sizes<T>(uu, dd, bias_g, o.use_softplus, dt, du, sig);
          const T *__restrict__ b_t = Bt + b * bb + t * bt, *__restrict__ c_t = Ct + b * cb + t * ct;
          std::fill(acc, acc + W, T(0));
          for (int64_t n = 0; n < N; ++n) {
            const T b_n = b_t[n], c_n = c_t[n];
            T *__restrict__ h_n = h + n * W;
            const T* __restrict__ A_n = A_g + n * W;
#pragma omp simd
            for (int64_t i = 0; i < W; ++i) {
              h_n[i] = fast_exp(dt[i] * A_n[i]) * h_n[i] + du[i] * b_n;
              acc[i] += c_n * h_n[i];
            }
          }
          T* __restrict__ ypre_t = ypre_g + t * W;
#pragma omp simd
          for (int64_t i = 0; i < W; ++i) ypre_t[i] = acc[i] + D_g[i] * uu[i];
          if (has_z) {
            z.load(b, t, e0, rows, zz);
#pragma omp simd
            for (int64_t i = 0; i < W; ++i) y[i] = ypre_t[i] * zz[i] * sigmoid(zz[i]);
            out.store(b, t, e0, rows, y);
          } else {
            out.store(b, t, e0, rows, ypre_t);
          }
        }
      }
    });
  }

  static void backward(const Options& o, const Strided<T>& gout, const Strided<T>& u, const Strided<T>& delta,
                       const Strided<T>& z, const T* __restrict__ A, const at::Tensor& Bt_, const at::Tensor& Ct_,
                       const T* D, const T* bias, const T* __restrict__ ypre, const T* __restrict__ states,
                       const Strided<T>& gu, const Strided<T>& gdelta, const Strided<T>& gz, T* __restrict__ gA,
                       T* __restrict__ gBt, T* __restrict__ gCt, T* __restrict__ gD, T* __restrict__ gbias) {
    const int64_t N = NS > 0 ? NS : o.N, L = o.L, E = o.E, G = o.groups, chunk = o.chunk, NW = N * W;
    const T *Bt = Bt_.data_ptr<T>(), *Ct = Ct_.data_ptr<T>();
    const int64_t bb = Bt_.stride(0), bt = Bt_.stride(1), cb = Ct_.stride(0), ct = Ct_.stride(1);
    // One task per batch row. Chunks run from the last, each over all channel groups; a group's reverse carry
    // (a_{t+1} dL/dh_{t+1}) waits between chunks. dB and dC of a chunk's steps are summed per lane over the groups,
    // then over the lanes: one order on any number of threads.
    at::parallel_for(0, o.batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> carry_v(G * NW), gA_v(G * NW), gD_v(G * W), gbias_v(G * W), A_v(G * NW);
      std::vector<T> h_v(NW), a_v(chunk * NW), hs_v(chunk * NW), gB_v(chunk * NW), gC_v(chunk * NW);
      std::vector<T> steps_v(5 * chunk * W);  // per step of the chunk: u, d, du, sigmoid, gy
      for (int64_t b = begin; b < end; ++b) {
        std::fill(carry_v.begin(), carry_v.end(), T(0));
        std::fill(gA_v.begin(), gA_v.end(), T(0));
        std::fill(gD_v.begin(), gD_v.end(), T(0));
        std::fill(gbias_v.begin(), gbias_v.end(), T(0));
        for (int64_t g = 0; g < G; ++g) transpose_A(A, g * W, std::min(W, E - g * W), N, A_v.data() + g * NW);
        for (int64_t c = (L - 1) / chunk; c >= 0; --c) {
          const int64_t t0 = c * chunk, t1 = std::min(t0 + chunk, L);
          std::fill(gB_v.begin(), gB_v.end(), T(0));
          std::fill(gC_v.begin(), gC_v.end(), T(0));
          for (int64_t g = 0; g < G; ++g)
            backward_group(o, b, g, c, t0, t1, gout, u, delta, z, A_v.data() + g * NW, Bt + b * bb, bt,
                           Ct + b * cb, ct, D, bias, ypre, states, gu, gdelta, gz, carry_v.data() + g * NW,
                           gA_v.data() + g * NW, gD_v.data() + g * W, gbias_v.data() + g * W, h_v.data(),
                           a_v.data(), hs_v.data(), gB_v.data(), gC_v.data(), steps_v.data());
          for (int64_t t = t0; t < t1; ++t)  // dB and dC of the chunk's steps: the lanes' sums
            for (int64_t n = 0; n < N; ++n) {
              const T *pB = gB_v.data() + ((t - t0) * N + n) * W, *pC = gC_v.data() + ((t - t0) * N + n) * W;
              T sB = 0, sC = 0;
              for (int64_t i = 0; i < W; ++i) sB += pB[i], sC += pC[i];
              gBt[(b * L + t) * N + n] = sB;
              gCt[(b * L + t) * N + n] = sC;
            }
        }
        for (int64_t e = 0; e < E; ++e) {
          const int64_t g = e / W, i = e % W;
          for (int64_t n = 0; n < N; ++n) gA[(b * E + e) * N + n] = gA_v[(g * N + n) * W + i];
          gD[b * E + e] = gD_v[g * W + i];
          gbias[b * E + e] = gbias_v[g * W + i];
        }
      }
    });
  }

  // One channel group's steps [t0, t1) of batch row b: recompute the states from the chunk's boundary, then the
  // reverse recursion; writes du, d delta and dz of those steps and accumulates the rest.
  static void backward_group(const Options& o, int64_t b, int64_t g, int64_t c, int64_t t0, int64_t t1,
                             const Strided<T>& gout, const Strided<T>& u, const Strided<T>& delta, const Strided<T>& z,
                             const T* __restrict__ A_g, const T* Bt, int64_t bt, const T* Ct, int64_t ct, const T* D,
                             const T* bias, const T* __restrict__ ypre, const T* __restrict__ states,
                             const Strided<T>& gu, const Strided<T>& gdelta, const Strided<T>& gz,
                             T* __restrict__ carry, T* __restrict__ gA_g, T* __restrict__ gD_g,
                             T* __restrict__ gbias_g, T* __restrict__ h, T* __restrict__ a_s, T* __restrict__ h_s,
                             T* __restrict__ gB_c, T* __restrict__ gC_c, T* __restrict__ steps) {
    const int64_t N = NS > 0 ? NS : o.N, NW = N * W, e0 = g * W, rows = std::min(W, o.E - e0);
    const int64_t len = t1 - t0, job = b * o.groups + g;
    T *__restrict__ u_s = steps, *__restrict__ d_s = steps + len * W, *__restrict__ du_s = steps + 2 * len * W;
    T *__restrict__ sig_s = steps + 3 * len * W, *__restrict__ gy_s = steps + 4 * len * W;
    alignas(64) T dd[W], go[W], zz[W], gzz[W], D_g[W], bias_g[W], s_du[W], s_dA[W], gu_t[W], gd_t[W];
    lanes_of(D, e0, rows, T(0), D_g);
    lanes_of(bias, e0, rows, T(0), bias_g);
    // The chunk's step sizes, and the gate and the skip: gy = dL/d(C.h), dL/dz, dD.
    const T* __restrict__ ypre_g = ypre + job * o.L * W;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t k = t - t0;
      T *__restrict__ uu = u_s + k * W, *__restrict__ gy = gy_s + k * W;
      u.load(b, t, e0, rows, uu);
      delta.load(b, t, e0, rows, dd);
      step_sizes<T>(uu, dd, bias_g, o.use_softplus, d_s + k * W, du_s + k * W, sig_s + k * W);
      gout.load(b, t, e0, rows, go);
      const T* __restrict__ ypre_t = ypre_g + t * W;
      if (o.has_z) {
        z.load(b, t, e0, rows, zz);
#pragma omp simd
        for (int64_t i = 0; i < W; ++i) {
          const T s = sigmoid(zz[i]);
          gzz[i] = go[i] * ypre_t[i] * s * (T(1) + zz[i] * (T(1) - s));  // silu'(z) = s (1 + z (1 - s))
          gy[i] = go[i] * zz[i] * s;
        }
        gz.store(b, t, e0, rows, gzz);
      } else {
        std::copy(go, go + W, gy);
      }
#pragma omp simd
      for (int64_t i = 0; i < W; ++i) gD_g[i] += gy[i] * uu[i];
    }
    // The chunk's decays and states, from its boundary.
    const T* __restrict__ boundary = states + (c * o.batch * o.groups + job) * NW;
    std::copy(boundary, boundary + NW, h);
    for (int64_t k = 0; k < len; ++k) {
      const T* __restrict__ b_t = Bt + (t0 + k) * bt;
      const T *__restrict__ dt = d_s + k * W, *__restrict__ du = du_s + k * W;
      for (int64_t n = 0; n < N; ++n) {
        const T b_n = b_t[n];
        T *__restrict__ a = a_s + (k * N + n) * W, *__restrict__ hk = h_s + (k * N + n) * W, *__restrict__ hn = h + n * W;
        const T* __restrict__ A_n = A_g + n * W;
#pragma omp simd
        for (int64_t i = 0; i < W; ++i) {
          a[i] = fast_exp(dt[i] * A_n[i]);
          hn[i] = a[i] * hn[i] + du[i] * b_n;
          hk[i] = hn[i];
        }
      }
    }
    // The reverse recursion.
    for (int64_t k = len - 1; k >= 0; --k) {
      const int64_t t = t0 + k;
      const T *__restrict__ b_t = Bt + t * bt, *__restrict__ c_t = Ct + t * ct;
      const T *__restrict__ gy = gy_s + k * W, *__restrict__ dt = d_s + k * W, *__restrict__ du = du_s + k * W;
      std::fill(s_du, s_du + W, T(0));
      std::fill(s_dA, s_dA + W, T(0));
      for (int64_t n = 0; n < N; ++n) {
        const T b_n = b_t[n], c_n = c_t[n];
        const T *__restrict__ a = a_s + (k * N + n) * W, *__restrict__ hk = h_s + (k * N + n) * W;
        const T* __restrict__ h_prev = k > 0 ? hk - NW : boundary + n * W;
        const T* __restrict__ A_n = A_g + n * W;
        T *__restrict__ cr = carry + n * W, *__restrict__ gA_n = gA_g + n * W;
        T *__restrict__ gB = gB_c + (k * N + n) * W, *__restrict__ gC = gC_c + (k * N + n) * W;
#pragma omp simd
        for (int64_t i = 0; i < W; ++i) {
          const T gh = gy[i] * c_n + cr[i];  // dL/dh_t
          gC[i] += gy[i] * hk[i];
          gB[i] += gh * du[i];
          s_du[i] += gh * b_n;
          const T p = gh * a[i] * h_prev[i];  // dL/d(d_t A_n)
          gA_n[i] += p * dt[i];
          s_dA[i] += p * A_n[i];
          cr[i] = a[i] * gh;
        }
      }
      // The step sizes' inputs: du, d(delta) through the softplus, d bias.
      const T *__restrict__ uu = u_s + k * W, *__restrict__ sig = sig_s + k * W;
#pragma omp simd
      for (int64_t i = 0; i < W; ++i) {
        gd_t[i] = (s_dA[i] + s_du[i] * uu[i]) * sig[i];
        gu_t[i] = s_du[i] * dt[i] + gy[i] * D_g[i];
        gbias_g[i] += gd_t[i];
      }
      gu.store(b, t, e0, rows, gu_t);
      gdelta.store(b, t, e0, rows, gd_t);
    }
  }
};


#pragma GCC pop_options

// The Mamba mixer's causal depthwise conv over time followed by SiLU, time-major:
//
//     pre_t = bias + sum_k w_k x_{t + k - (K - 1)}   (x_s = 0 for s < 0),   out_t = silu(pre_t)
//
// (torch's conv1d with padding K - 1, first L outputs kept). A task owns one channel group of W lanes across all
// batch rows and steps, so the weight and bias gradients are summed in one order whatever the number of threads.
template <typename T>
struct Conv {
  using V = Vec<T>;
  int64_t batch, E, L, K, groups;

  // The K weight vectors of the group at channel e0 into wv, lane i = channel e0 + i (lanes past the last channel
  // 0); returns the group's bias vector (0 without a bias).
  V weights(const T* w, const T* bias, int64_t e0, int64_t rows, V* wv) const {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t i = 0; i < W; ++i) wv[k][i] = i < rows ? w[(e0 + i) * K + k] : T(0);
    alignas(64) T lanes[W];
    lanes_of(bias, e0, rows, T(0), lanes);
    return load_v(lanes);
  }

  // pre_t of one batch row and group, from the x rows loaded in xs ([L][W]).
  V pre(const T* __restrict__ xs, const V* wv, const V& bv, int64_t t) const {
    V acc = bv;
    for (int64_t k = std::max<int64_t>(0, K - 1 - t); k < K; ++k) acc += wv[k] * load_v(xs + (t + k - (K - 1)) * W);
    return acc;
  }

  void forward(const Strided<T>& x, const T* w, const T* bias, const Strided<T>& out) const {
    at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
      std::vector<T> xs(L * W);
      std::vector<V> wv(K);
      alignas(64) T lanes[W];
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t e0 = g * W, rows = std::min(W, E - e0);
        const V bv = weights(w, bias, e0, rows, wv.data());
        for (int64_t b = 0; b < batch; ++b) {
          for (int64_t t = 0; t < L; ++t) x.load(b, t, e0, rows, xs.data() + t * W);
          for (int64_t t = 0; t < L; ++t) {
            const V p = pre(xs.data(), wv.data(), bv, t);
            store_v(lanes, p * sigmoid_v(p));
            out.store(b, t, e0, rows, lanes);
          }
        }
      }
    });
  }

  // gx (time-major), and per channel gw [E, K] and gbias [E].
  void backward(const Strided<T>& gout, const Strided<T>& x, const T* w, const T* bias, const Strided<T>& gx,
                T* gw, T* gbias) const {
    at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
      std::vector<T> xs(L * W), gp(L * W);
      std::vector<V> wv(K), gwv(K);
      alignas(64) T lanes[W];
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t e0 = g * W, rows = std::min(W, E - e0);
        const V bv = weights(w, bias, e0, rows, wv.data());
        std::fill(gwv.begin(), gwv.end(), V{});
        V gbv = {};
        for (int64_t b = 0; b < batch; ++b) {
          for (int64_t t = 0; t < L; ++t) x.load(b, t, e0, rows, xs.data() + t * W);
          for (int64_t t = 0; t < L; ++t) {  // d pre_t = d out_t * silu'(pre_t)
            const V p = pre(xs.data(), wv.data(), bv, t), s = sigmoid_v(p);
            gout.load(b, t, e0, rows, lanes);
            const V gpt = load_v(lanes) * s * (T(1) + p * (T(1) - s));
            store_v(gp.data() + t * W, gpt);
            gbv += gpt;
            for (int64_t k = std::max<int64_t>(0, K - 1 - t); k < K; ++k)
              gwv[k] += gpt * load_v(xs.data() + (t + k - (K - 1)) * W);
          }
          for (int64_t s = 0; s < L; ++s) {  // d x_s = sum_k w_k d pre_{s + K - 1 - k}
            V acc = {};
            for (int64_t k = std::max<int64_t>(0, s + K - L); k < K; ++k)
              acc += wv[k] * load_v(gp.data() + (s + K - 1 - k) * W);
            store_v(lanes, acc);
            gx.store(b, s, e0, rows, lanes);
          }
        }
        for (int64_t i = 0; i < rows; ++i) {
          for (int64_t k = 0; k < K; ++k) gw[(e0 + i) * K + k] = gwv[k][i];
          gbias[e0 + i] = gbv[i];
        }
      }
    });
  }
};

Options options(const at::Tensor& u, const at::Tensor& A, const at::Tensor& D, const at::Tensor& z,
                const at::Tensor& bias, bool use_softplus, int64_t chunk) {
  TORCH_CHECK(chunk >= 1, "chunk must be >= 1");
  const int64_t E = u.size(1);
  return {u.size(0), E, u.size(2), A.size(1), chunk, (E + W - 1) / W, D.defined(), z.defined(), bias.defined(),
          use_softplus};
}

template <typename T>
const T* maybe(const at::Tensor& x) {
  return x.defined() ? x.data_ptr<T>() : nullptr;
}

// A [B, E, L] tensor laid out time-major ([B, L, E] memory), as a Mamba mixer's next projection reads it.
at::Tensor time_major(const at::Tensor& like) {
  return at::empty({like.size(0), like.size(2), like.size(1)}, like.options()).transpose(1, 2);
}

std::vector<at::Tensor> scan_forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                     const at::Tensor& Bt, const at::Tensor& Ct, const c10::optional<at::Tensor>& D,
                                     const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias,
                                     bool use_softplus, int64_t chunk) {
  const at::Tensor D_ = D.value_or(at::Tensor()), z_ = z.value_or(at::Tensor()), bias_ = bias.value_or(at::Tensor());
  const Options o = options(u, A, D_, z_, bias_, use_softplus, chunk);
  TORCH_CHECK(Bt.stride(2) == 1 && Ct.stride(2) == 1, "B and C must be [B, L, N] with unit stride over N");
  auto out = time_major(u);
  auto ypre = at::empty({o.batch, o.groups, o.L, W}, u.options());
  auto states = at::empty({(o.L + chunk - 1) / chunk, o.batch, o.groups, o.N, W}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_forward", [&] {
    using T = scalar_t;
    auto run = [&](auto scan) {
      decltype(scan)::forward(o, Strided<T>(u), Strided<T>(delta), z_.defined() ? Strided<T>(z_) : Strided<T>(u),
                              A.data_ptr<T>(), Bt, Ct, maybe<T>(D_), maybe<T>(bias_), Strided<T>(out),
                              ypre.data_ptr<T>(), states.data_ptr<T>());
    };
    o.N == 16 ? run(Scan<T, 16>()) : o.N == 8 ? run(Scan<T, 8>()) : run(Scan<T, 0>());
  });
  return {out, ypre, states};
}

std::vector<at::Tensor> scan_backward(const at::Tensor& gout, const at::Tensor& u, const at::Tensor& delta,
                                      const at::Tensor& A, const at::Tensor& Bt, const at::Tensor& Ct,
                                      const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                                      const c10::optional<at::Tensor>& bias, bool use_softplus,
                                      const at::Tensor& ypre, const at::Tensor& states, int64_t chunk) {
  const at::Tensor D_ = D.value_or(at::Tensor()), z_ = z.value_or(at::Tensor()), bias_ = bias.value_or(at::Tensor());
  const Options o = options(u, A, D_, z_, bias_, use_softplus, chunk);
  auto gu = time_major(u), gdelta = time_major(u);
  auto gz = z_.defined() ? time_major(u) : at::Tensor();
  auto gA = at::empty({o.batch, o.E, o.N}, u.options());
  auto gBt = at::empty({o.batch, o.L, o.N}, u.options()), gCt = at::empty({o.batch, o.L, o.N}, u.options());
  auto gD = at::empty({o.batch, o.E}, u.options()), gbias = at::empty({o.batch, o.E}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_backward", [&] {
    using T = scalar_t;
    auto run = [&](auto scan) {
      const Strided<T> z_view = z_.defined() ? Strided<T>(z_) : Strided<T>(u);
      decltype(scan)::backward(o, Strided<T>(gout), Strided<T>(u), Strided<T>(delta), z_view, A.data_ptr<T>(), Bt,
                               Ct, maybe<T>(D_), maybe<T>(bias_), ypre.data_ptr<T>(), states.data_ptr<T>(),
                               Strided<T>(gu), Strided<T>(gdelta), z_.defined() ? Strided<T>(gz) : Strided<T>(gu),
                               gA.data_ptr<T>(), gBt.data_ptr<T>(), gCt.data_ptr<T>(), gD.data_ptr<T>(),
                               gbias.data_ptr<T>());
    };
    o.N == 16 ? run(Scan<T, 16>()) : o.N == 8 ? run(Scan<T, 8>()) : run(Scan<T, 0>());
  });
  return {gu, gdelta, gz, gA.sum(0), gBt, gCt, gD.sum(0), gbias.sum(0)};
}

// x: [B, E, L] (any strides), weight: [E, K] contiguous, bias: [E] or none -> silu(causal conv), time-major.
at::Tensor conv_forward(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  const at::Tensor bias_ = bias.value_or(at::Tensor());
  auto out = time_major(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_silu_cpu_forward", [&] {
    using T = scalar_t;
    const Conv<T> conv{x.size(0), x.size(1), x.size(2), weight.size(1), (x.size(1) + W - 1) / W};
    conv.forward(Strided<T>(x), weight.data_ptr<T>(), maybe<T>(bias_), Strided<T>(out));
  });
  return out;
}

std::vector<at::Tensor> conv_backward(const at::Tensor& gout, const at::Tensor& x, const at::Tensor& weight,
                                      const c10::optional<at::Tensor>& bias) {
  const at::Tensor bias_ = bias.value_or(at::Tensor());
  auto gx = time_major(x);
  auto gw = at::empty_like(weight), gbias = at::empty({x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_silu_cpu_backward", [&] {
    using T = scalar_t;
    const Conv<T> conv{x.size(0), x.size(1), x.size(2), weight.size(1), (x.size(1) + W - 1) / W};
    conv.backward(Strided<T>(gout), Strided<T>(x), weight.data_ptr<T>(), maybe<T>(bias_), Strided<T>(gx),
                  gw.data_ptr<T>(), gbias.data_ptr<T>());
  });
  return {gx, gw, gbias};
}

}  // namespace mom_cpu
