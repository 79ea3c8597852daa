// Vector math shared by the CPU kernels: W = 16 lanes as one GCC vector value (one AVX-512 register of float32),
// and exp, log1p and the sigmoid as polynomials the vectoriser inlines, for a float and for W lanes at once.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace mom_cpu {

// 2^f for f in [-1/2, 1/2]: a degree-6 polynomial (Chebyshev fit), for a float or a vector of floats.
template <typename U>
inline U exp2_poly(U f) {
  U p = U{} + 1.54697362e-04f;
  p = p * f + 1.34004369e-03f;
  p = p * f + 9.61802559e-03f;
  p = p * f + 5.55032720e-02f;
  p = p * f + 2.40226512e-01f;
  p = p * f + 6.93147207e-01f;
  return p * f + 1.0f;
}

// exp(x) for float: 2^(x log2 e) as 2^k times a degree-6 polynomial (Chebyshev fit) for 2^f, f in [-1/2, 1/2].
// Relative error about 1e-7 (float32 rounding), so the errors that accumulate over a long scan stay at float32's
// own level; arguments below -87 give 0, above 88 a large finite number.
inline float fast_exp(float x) {
  const float y = std::min(std::max(x * 1.4426950408889634f, -126.0f), 127.0f);
  const float k = std::floor(y + 0.5f);
  const float f = y - k;
  const float p = exp2_poly(f);
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.0f ? 0.0f : p * scale;
}

// log(1 + y) for float y in [0, 1]: 2 atanh(s) with s = y / (2 + y) in [0, 1/3], six odd terms (error < 1e-7,
// relative, also for tiny y).
inline float fast_log1p(float y) {
  const float s = y / (2.0f + y), s2 = s * s;
  float p = 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return 2.0f * s * p;
}

inline double fast_exp(double x) { return std::exp(x); }
inline double fast_log1p(double y) { return std::log1p(y); }

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + fast_exp(-x));
}

constexpr int64_t W = 16;  // channels stepped together

// W lanes as one GCC vector value (one AVX-512 register of float32, two of float64), loaded and stored unaligned
// (through memcpy, which compiles to one unaligned move).
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(W * sizeof(T))));
};
template <typename T>
using Vec = typename VecOf<T>::type;
static_assert(sizeof(Vec<float>) == W * sizeof(float) && sizeof(Vec<double>) == W * sizeof(double));

template <typename T>
inline Vec<T> load_v(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store_v(T* p, const Vec<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// fast_exp on W lanes at once, written with vector operations so that it never falls back to scalar code.
inline Vec<float> exp_v(Vec<float> x) {
  using VI = VecOf<int32_t>::type;
  const Vec<float> zero = {}, lo = zero - 126.0f, hi = zero + 127.0f;
  Vec<float> y = x * 1.4426950408889634f;
  y = y < lo ? lo : y;
  y = y > hi ? hi : y;
  const Vec<float> yh = y + 0.5f;  // k = floor(y + 1/2): truncate, then step down where that rounded up
  VI ki = __builtin_convertvector(yh, VI);
  ki += __builtin_convertvector(ki, Vec<float>) > yh;  // true is -1
  const Vec<float> f = y - __builtin_convertvector(ki, Vec<float>);
  const Vec<float> p = exp2_poly(f);
  const VI bits = (ki + 127) << 23;
  Vec<float> scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < zero - 87.0f ? zero : p * scale;
}

inline Vec<double> exp_v(Vec<double> x) {
  for (int64_t i = 0; i < W; ++i) x[i] = std::exp(x[i]);
  return x;
}

inline Vec<float> sigmoid_v(const Vec<float>& x) { return 1.0f / (1.0f + exp_v(-x)); }
inline Vec<double> sigmoid_v(const Vec<double>& x) { return 1.0 / (1.0 + exp_v(-x)); }

}  // namespace mom_cpu
