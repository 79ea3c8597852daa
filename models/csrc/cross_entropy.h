// Next-token cross-entropy on the CPU, forward and backward, for models/cpu_kernels.py: per row i of logits [N, V],
//
//     ce_i = logsumexp(x_i) - x_i[t_i]        d x_ij = g_i (exp(x_ij - logsumexp(x_i)) - [j == t_i])
//
// and 0 (no gradient) where t_i is the ignore index. One pass finds the row's maximum, one sums exp(x - max) in W
// lanes; the backward writes the gradient in one pass. torch's log_softmax, its backward and the one-hot fill make
// four passes over [N, V] and a float32 copy of bf16 logits one more; at the tiny scale that was a sixth of a step.
// bf16 logits are read and their gradient written in bf16 (round to nearest even), sums always in float32 or more.
// Rows are independent, so the bits do not depend on the number of threads.

#pragma once

#include <ATen/Dispatch.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <ATen/Parallel.h>

#include <limits>
#include <vector>

#include "vec.h"

namespace mom_cpu {

// W values of x as float (T = float) or double, or bf16 widened to float.
template <typename T>
struct Lanes {
  using F = T;
  static Vec<F> load(const T* p) { return load_v(p); }
  static void store(T* p, const Vec<F>& v) { store_v(p, v); }
  static F scalar(T x) { return x; }
  static T from(F x) { return x; }
};

template <>
struct Lanes<at::BFloat16> {
  using F = float;
  using Bits = VecOf<uint32_t>::type;
  typedef uint16_t Half __attribute__((vector_size(W * sizeof(uint16_t))));
  static Vec<float> load(const at::BFloat16* p) {
    Half h;
    std::memcpy(&h, p, sizeof(h));
    const Bits bits = __builtin_convertvector(h, Bits) << 16;
    Vec<float> v;
    std::memcpy(&v, &bits, sizeof(v));
    return v;
  }
  static void store(at::BFloat16* p, const Vec<float>& v) {
    Bits bits;
    std::memcpy(&bits, &v, sizeof(bits));
    bits += ((bits >> 16) & 1) + 0x7FFF;  // round to nearest even, as at::BFloat16(float) does
    const Half h = __builtin_convertvector(bits >> 16, Half);
    std::memcpy(p, &h, sizeof(h));
  }
  static float scalar(at::BFloat16 x) { return static_cast<float>(x); }
  static at::BFloat16 from(float x) { return at::BFloat16(x); }
};

template <typename T>
typename Lanes<T>::F row_logsumexp(const T* x, int64_t V) {
  using L = Lanes<T>;
  using F = typename L::F;
  const int64_t full = V / W * W;
  F m = -std::numeric_limits<F>::infinity();
  if (full) {
    Vec<F> mv = L::load(x);
    for (int64_t j = W; j < full; j += W) {
      const Vec<F> v = L::load(x + j);
      mv = v > mv ? v : mv;
    }
    for (int64_t k = 0; k < W; ++k) m = std::max(m, mv[k]);
  }
  for (int64_t j = full; j < V; ++j) m = std::max(m, L::scalar(x[j]));
  if (!std::isfinite(m)) return m;  // a row of -inf (or holding +inf or NaN): its logsumexp is that value
  Vec<F> sv = {};
  for (int64_t j = 0; j < full; j += W) sv += exp_v(L::load(x + j) - m);
  F s = 0;
  for (int64_t k = 0; k < W; ++k) s += sv[k];
  for (int64_t j = full; j < V; ++j) s += fast_exp(L::scalar(x[j]) - m);
  return m + std::log(s);
}

inline void check_targets(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore) {
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous(), "logits must be a contiguous [N, V] tensor");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0) && targets.scalar_type() == at::kLong,
              "targets must be an int64 [N] tensor");
  const auto valid = targets.eq(ignore) | (targets.ge(0) & targets.lt(logits.size(1)));
  TORCH_CHECK(valid.all().item<bool>(), "cross_entropy: a target is outside [0, ", logits.size(1),
              ") and is not the ignore index ", ignore);
}

// -> (ce [N], logsumexp [N]) in float32 (float64 for float64 logits).
std::vector<at::Tensor> ce_forward(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore) {
  check_targets(logits, targets, ignore);
  const int64_t N = logits.size(0), V = logits.size(1);
  const auto acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto ce = at::empty({N}, logits.options().dtype(acc)), lse = at::empty({N}, logits.options().dtype(acc));
  const int64_t* t = targets.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, logits.scalar_type(), "cross_entropy_cpu_forward", [&] {
    using L = Lanes<scalar_t>;
    using F = typename L::F;
    const scalar_t* x = logits.data_ptr<scalar_t>();
    F *ce_p = ce.data_ptr<F>(), *lse_p = lse.data_ptr<F>();
    at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const bool ignored = t[i] == ignore;
        lse_p[i] = ignored ? F(0) : row_logsumexp(x + i * V, V);
        ce_p[i] = ignored ? F(0) : lse_p[i] - L::scalar(x[i * V + t[i]]);
      }
    });
  });
  return {ce, lse};
}

// d logits, in the logits' dtype.
at::Tensor ce_backward(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& targets,
                       const at::Tensor& lse, int64_t ignore) {
  const int64_t N = logits.size(0), V = logits.size(1), full = V / W * W;
  auto out = at::empty_like(logits);
  const int64_t* t = targets.data_ptr<int64_t>();
  const at::Tensor g = grad.to(lse.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, logits.scalar_type(), "cross_entropy_cpu_backward", [&] {
    using L = Lanes<scalar_t>;
    using F = typename L::F;
    const scalar_t* x = logits.data_ptr<scalar_t>();
    const F *g_p = g.data_ptr<F>(), *lse_p = lse.data_ptr<F>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* xi = x + i * V;
        scalar_t* oi = o + i * V;
        if (t[i] == ignore) {
          std::fill(oi, oi + V, scalar_t(0));
          continue;
        }
        const F gi = g_p[i], m = lse_p[i];
        for (int64_t j = 0; j < full; j += W) L::store(oi + j, gi * exp_v(L::load(xi + j) - m));
        for (int64_t j = full; j < V; ++j) oi[j] = L::from(gi * fast_exp(L::scalar(xi[j]) - m));
        oi[t[i]] = L::from(gi * (fast_exp(L::scalar(xi[t[i]]) - m) - F(1)));
      }
    });
  });
  return out;
}

}  // namespace mom_cpu
