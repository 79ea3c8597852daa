// The selective scan's recurrence on the CPU, forward and backward, for models/scan_cpu.py.
//
// For every batch b and channel e the core recurrence runs over time with the state h (N values) in registers:
//
//     a_t = exp(d_t A),   h_t = a_t * h_{t-1} + (d_t u_t) B_t,   y_t = sum_n C_t h_t
//
// with d = delta after its bias and softplus (applied by the caller, as are the D skip and the silu gate). The loops
// over the N states are written for the compiler to vectorise: the state size is a template parameter for the
// common sizes (N = 16 float32 is one AVX-512 register, kept in registers across steps), with a generic runtime-N
// path for the rest; exp is a polynomial the vectoriser inlines. Only the states at chunk boundaries (every `chunk`
// steps) are kept for the backward, which recomputes a chunk's states from its boundary and runs the reverse
// recursion over it.
//
// Layouts: u, d, y [B, E, L] contiguous; Bt, Ct [B, L, N] contiguous (time-major per batch, so B_t is contiguous);
// A [E, N]. The backward splits its work by batch row b: each task owns its b's slice of dB and dC and its own
// partial dA, so every sum is taken in one fixed order whatever the number of threads: a run gives the same bits
// on 1 or 2 cores.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// exp(x) for float: 2^(x log2 e) as 2^k times a degree-6 polynomial (Chebyshev fit) for 2^f, f in [-1/2, 1/2].
// Relative error about 1e-7 (float32 rounding), so the errors that accumulate over a long scan stay at float32's
// own level; arguments below -87 give 0.
inline float fast_exp(float x) {
  const float y = std::min(std::max(x * 1.4426950408889634f, -126.0f), 127.0f);
  const float k = std::floor(y + 0.5f);
  const float f = y - k;
  float p = 1.54697362e-04f;
  p = p * f + 1.34004369e-03f;
  p = p * f + 9.61802559e-03f;
  p = p * f + 5.55032720e-02f;
  p = p * f + 2.40226512e-01f;
  p = p * f + 6.93147207e-01f;
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.0f ? 0.0f : p * scale;
}

inline double fast_exp(double x) { return std::exp(x); }

// The kernels for one state size (16 and 8 are compiled as such; other sizes take NS = 0): NS > 0 fixes N at compile
// time (the loops become straight vector code and the
// state stays in registers); NS == 0 reads N at run time.
template <typename T, int NS>
struct Scan {
  static void forward(const T* __restrict__ u, const T* __restrict__ d, const T* __restrict__ A,
                      const T* __restrict__ Bt, const T* __restrict__ Ct, T* __restrict__ y, T* __restrict__ states,
                      int64_t batch, int64_t E, int64_t L, int64_t n_runtime, int64_t chunk) {
    const int64_t N = NS > 0 ? NS : n_runtime;
    // Rows (b, e) are independent: any split over threads gives the same bits.
    at::parallel_for(0, batch * E, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> h_vec(N), A_vec(N);
      T* __restrict__ h = h_vec.data();
      T* __restrict__ A_e = A_vec.data();
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / E, e = row % E;
        const T* __restrict__ u_r = u + row * L;
        const T* __restrict__ d_r = d + row * L;
        const T* __restrict__ B_b = Bt + b * L * N;
        const T* __restrict__ C_b = Ct + b * L * N;
        T* __restrict__ y_r = y + row * L;
        std::copy(A + e * N, A + e * N + N, A_e);
        std::fill(h, h + N, T(0));
        for (int64_t t = 0; t < L; ++t) {
          if (t % chunk == 0) std::copy(h, h + N, states + (((t / chunk) * batch + b) * E + e) * N);
          const T dt = d_r[t], du = dt * u_r[t];
          const T* __restrict__ b_t = B_b + t * N;
          const T* __restrict__ c_t = C_b + t * N;
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t n = 0; n < N; ++n) {
            h[n] = fast_exp(dt * A_e[n]) * h[n] + du * b_t[n];
            acc += c_t[n] * h[n];
          }
          y_r[t] = acc;
        }
      }
    });
  }

  static void backward(const T* __restrict__ gy, const T* __restrict__ u, const T* __restrict__ d,
                       const T* __restrict__ A, const T* __restrict__ Bt, const T* __restrict__ Ct,
                       const T* __restrict__ states, T* __restrict__ gu, T* __restrict__ gd, T* __restrict__ gA,
                       T* __restrict__ gBt, T* __restrict__ gCt, int64_t batch, int64_t E, int64_t L,
                       int64_t n_runtime, int64_t chunk) {
    const int64_t N = NS > 0 ? NS : n_runtime;
    // One task per batch row: it owns gB[b], gC[b] and gA[b] (summed over b afterwards), so every sum has one order.
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> h_vec(N), carry_vec(N), a_buf(chunk * N), h_buf(chunk * N);
      T* __restrict__ h = h_vec.data();
      T* __restrict__ carry = carry_vec.data();  // a_{t+1} * dL/dh_{t+1}, flowing backwards in time
      T* __restrict__ a_s = a_buf.data();        // the chunk's decays, [t - t0][n]
      T* __restrict__ h_s = h_buf.data();        // the chunk's states, [t - t0][n]
      for (int64_t b = begin; b < end; ++b) {
        const T* __restrict__ B_b = Bt + b * L * N;
        const T* __restrict__ C_b = Ct + b * L * N;
        T* __restrict__ gB_b = gBt + b * L * N;
        T* __restrict__ gC_b = gCt + b * L * N;
        for (int64_t e = 0; e < E; ++e) {
          const int64_t row = b * E + e;
          const T *__restrict__ u_r = u + row * L, *__restrict__ d_r = d + row * L, *__restrict__ gy_r = gy + row * L;
          const T* __restrict__ A_e = A + e * N;
          T *__restrict__ gu_r = gu + row * L, *__restrict__ gd_r = gd + row * L, *__restrict__ gA_e = gA + row * N;
          std::fill(carry, carry + N, T(0));
          for (int64_t c = (L - 1) / chunk; c >= 0; --c) {
            const int64_t t0 = c * chunk, t1 = std::min(t0 + chunk, L);
            const T* __restrict__ boundary = states + ((c * batch + b) * E + e) * N;
            std::copy(boundary, boundary + N, h);
            for (int64_t t = t0; t < t1; ++t) {  // recompute the chunk's decays and states
              const T dt = d_r[t], du = dt * u_r[t];
              const T* __restrict__ b_t = B_b + t * N;
              T* __restrict__ a_t = a_s + (t - t0) * N;
              T* __restrict__ h_t = h_s + (t - t0) * N;
#pragma omp simd
              for (int64_t n = 0; n < N; ++n) {
                a_t[n] = fast_exp(dt * A_e[n]);
                h[n] = a_t[n] * h[n] + du * b_t[n];
                h_t[n] = h[n];
              }
            }
            for (int64_t t = t1 - 1; t >= t0; --t) {  // the reverse recursion
              const T gy_t = gy_r[t], dt = d_r[t], du = dt * u_r[t];
              const T *__restrict__ b_t = B_b + t * N, *__restrict__ c_t = C_b + t * N;
              const T *__restrict__ a_t = a_s + (t - t0) * N, *__restrict__ h_t = h_s + (t - t0) * N;
              const T* __restrict__ h_prev = t > t0 ? h_t - N : boundary;
              T *__restrict__ gb_t = gB_b + t * N, *__restrict__ gc_t = gC_b + t * N;
              T g_du = 0, g_dA = 0;
#pragma omp simd reduction(+ : g_du, g_dA)
              for (int64_t n = 0; n < N; ++n) {
                const T gh = gy_t * c_t[n] + carry[n];  // dL/dh_t
                gc_t[n] += gy_t * h_t[n];
                gb_t[n] += gh * du;
                g_du += gh * b_t[n];
                const T p = gh * a_t[n] * h_prev[n];  // dL/d(d_t A_n)
                gA_e[n] += p * dt;
                g_dA += p * A_e[n];
                carry[n] = a_t[n] * gh;
              }
              gd_r[t] = g_dA + g_du * u_r[t];
              gu_r[t] = g_du * dt;
            }
          }
        }
      }
    });
  }
};

std::vector<at::Tensor> scan_forward(const at::Tensor& u, const at::Tensor& d, const at::Tensor& A,
                                     const at::Tensor& Bt, const at::Tensor& Ct, int64_t chunk) {
  TORCH_CHECK(chunk >= 1, "chunk must be >= 1");
  const int64_t batch = u.size(0), E = u.size(1), L = u.size(2), N = A.size(1);
  auto y = at::empty_like(u);
  auto states = at::empty({(L + chunk - 1) / chunk, batch, E, N}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_forward", [&] {
    auto run = [&](auto scan) {
      decltype(scan)::forward(u.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                              Bt.data_ptr<scalar_t>(), Ct.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                              states.data_ptr<scalar_t>(), batch, E, L, N, chunk);
    };
    N == 16 ? run(Scan<scalar_t, 16>()) : N == 8 ? run(Scan<scalar_t, 8>()) : run(Scan<scalar_t, 0>());
  });
  return {y, states};
}

std::vector<at::Tensor> scan_backward(const at::Tensor& gy, const at::Tensor& u, const at::Tensor& d,
                                      const at::Tensor& A, const at::Tensor& Bt, const at::Tensor& Ct,
                                      const at::Tensor& states, int64_t chunk) {
  const int64_t batch = u.size(0), E = u.size(1), L = u.size(2), N = A.size(1);
  auto gu = at::empty_like(u), gd = at::empty_like(d);
  auto gA_parts = at::zeros({batch, E, N}, u.options());
  auto gBt = at::zeros_like(Bt), gCt = at::zeros_like(Ct);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_backward", [&] {
    auto run = [&](auto scan) {
      decltype(scan)::backward(gy.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(),
                               A.data_ptr<scalar_t>(), Bt.data_ptr<scalar_t>(), Ct.data_ptr<scalar_t>(),
                               states.data_ptr<scalar_t>(), gu.data_ptr<scalar_t>(), gd.data_ptr<scalar_t>(),
                               gA_parts.data_ptr<scalar_t>(), gBt.data_ptr<scalar_t>(), gCt.data_ptr<scalar_t>(),
                               batch, E, L, N, chunk);
    };
    N == 16 ? run(Scan<scalar_t, 16>()) : N == 8 ? run(Scan<scalar_t, 8>()) : run(Scan<scalar_t, 0>());
  });
  return {gu, gd, gA_parts.sum(0), gBt, gCt};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &scan_forward, "selective scan recurrence, forward: (y, chunk-boundary states)");
  m.def("backward", &scan_backward, "selective scan recurrence, backward: (du, dd, dA, dB_t, dC_t)");
}
