// ACmix's attention path on CPU (the rule: acmix_window_attention.h), as shifted-window
// products over whole runs of output pixels (acmix_window_shifts.h): no unfolded windows,
// no per-pixel gathers and no wasted FLOPs.
//
// The position term: logit_u = q_c·(k_u − pe_u) + q_c·pe_c.  The second part is the same for
// every u of a query, so the softmax cancels it (its gradients are exactly zero); the kernel
// attends over k − pe.  Only the softmax weights (B, heads, window², Ho, Wo) are kept for the
// backward.  One work item per (b, head) plane, which owns that plane's gradients; pe's
// gradient is minus the sum of every plane's k gradient (deterministic).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../acmix_window_attention.h"
#include "acmix_window_shifts.h"

namespace translution_ext {

namespace {

// Channel-major (channels, Hi, Wi) -> query side (channels, Ho, row): pixel (yo·step, xo·step).
template <typename scalar_t, typename T>
void to_query_side(const ShiftLayout& l, const scalar_t* src, int64_t channels, int64_t Hi, int64_t Wi, int64_t step,
                   T* dst) {
  std::fill(dst, dst + channels * l.Ho_row(), T(0));
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t yo = 0; yo < l.Ho; ++yo)
      for (int64_t xo = 0; xo < l.Wo; ++xo)
        dst[c * l.Ho_row() + yo * l.row + l.margin + xo] = T(src[(c * Hi + yo * step) * Wi + xo * step]);
}

// The reverse for the output pixels only: dst (channels, Ho, Wo).
template <typename T, typename out_t>
void from_query_side(const ShiftLayout& l, const T* src, int64_t channels, out_t* dst) {
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t yo = 0; yo < l.Ho; ++yo)
      for (int64_t xo = 0; xo < l.Wo; ++xo)
        dst[(c * l.Ho + yo) * l.Wo + xo] = static_cast<out_t>(src[c * l.Ho_row() + yo * l.row + l.margin + xo]);
}

// Calls f(d, padded row r, phase column c, original pixel index) for every padded pixel of
// a (hd, H, W) plane that some window reads.
template <typename F>
void each_padded(const ShiftLayout& l, int64_t H, int64_t W, const F& f) {
  const int64_t half = l.ka / 2, Wp = (l.Wo - 1) * l.s + l.ka;
  for (int64_t d = 0; d < l.hd; ++d)
    for (int64_t r = 0; r < l.Hp; ++r)
      for (int64_t col = 0; col < Wp; ++col)
        f(d * l.key_plane() + (r * l.s + col % l.s) * l.cols + col / l.s,
          (d * H + reflect(r - half, H)) * W + reflect(col - half, W));
}

// (hd, H, W) minus `sub` when given -> the padded key side (hd, Hp, stride, cols).
template <typename scalar_t, typename T>
void to_key_side(const ShiftLayout& l, const scalar_t* src, const scalar_t* sub, int64_t H, int64_t W, T* dst) {
  std::fill(dst, dst + l.hd * l.key_plane(), T(0));
  each_padded(l, H, W, [&](int64_t at, int64_t pixel) {
    dst[at] = sub ? T(src[pixel]) - T(sub[pixel]) : T(src[pixel]);
  });
}

// Softmax over u of the logits (U, Ho, row) times scale, in place, for the output pixels.
template <typename T>
void softmax_u(const ShiftLayout& l, T* a, double scale) {
  for (int64_t yo = 0; yo < l.Ho; ++yo) {
    T* base = a + yo * l.row + l.margin;
    for (int64_t x = 0; x < l.Wo; ++x) {
      T mx = -std::numeric_limits<T>::infinity();
      for (int64_t u = 0; u < l.U; ++u) mx = std::max(mx, base[u * l.Ho_row() + x] * T(scale));
      T total = 0;
      for (int64_t u = 0; u < l.U; ++u) {
        T& e = base[u * l.Ho_row() + x];
        total += (e = std::exp(e * T(scale) - mx));
      }
      for (int64_t u = 0; u < l.U; ++u) base[u * l.Ho_row() + x] /= total;
    }
  }
}

struct Plane {  // one thread's working maps for one plane at a time
  at::Tensor qs, ws, ms;  // query side: q (or dO) (hd, ...); a (U, ...); output (or dq) (hd, ...)
  at::Tensor dls;         // query side (U, ...): dlogit
  at::Tensor ks, vs;      // key side (hd, ...): k − pe, v; their gradients
  Plane(const ShiftLayout& l, at::TensorOptions o, bool backward)
      : qs(at::empty({l.hd * l.Ho_row()}, o)), ws(at::empty({l.U * l.Ho_row()}, o)), ms(at::empty_like(qs)),
        dls(backward ? at::empty_like(ws) : at::Tensor()), ks(at::empty({l.hd * l.key_plane()}, o)),
        vs(at::empty_like(ks)) {}
};

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                               const at::Tensor& pe_in, int64_t heads, int64_t window, int64_t stride,
                                               double scale) {
  const AcmixGeometry g = check_acmix(q_in, k_in, v_in, pe_in, heads, window, stride);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(), pe = pe_in.contiguous();
  const ShiftLayout l = shift_layout(g.hd, window, stride, g.Ho, g.Wo);
  const int64_t HW = g.H * g.W, HoWo = g.Ho * g.Wo;
  const auto acc_type = at::toOpMathType(q.scalar_type());
  at::Tensor out = at::empty({g.B, g.C, g.Ho, g.Wo}, q.options());
  at::Tensor attn = at::empty({g.B, g.heads, l.U, g.Ho, g.Wo}, q.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "acmix_window_attention", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>();
    const scalar_t* pp = pe.data_ptr<scalar_t>();
    at::parallel_for(0, g.B * g.heads, 1, [&](int64_t first, int64_t last) {
      Plane w(l, q.options().dtype(acc_type), false);
      T *qs = w.qs.data_ptr<T>(), *as = w.ws.data_ptr<T>(), *os = w.ms.data_ptr<T>();
      T *ks = w.ks.data_ptr<T>(), *vs = w.vs.data_ptr<T>();
      for (int64_t p = first; p < last; ++p) {
        const int64_t base = p * g.hd * HW;  // channels p·hd.. of the (B·heads·hd, H, W) maps
        to_query_side(l, qp + base, g.hd, g.H, g.W, stride, qs);
        to_key_side(l, kp + base, pp, g.H, g.W, ks);
        to_key_side(l, vp + base, static_cast<const scalar_t*>(nullptr), g.H, g.W, vs);
        shift_dot(l, qs, ks, as);
        softmax_u(l, as, scale);
        shift_sum(l, as, vs, os);
        from_query_side(l, os, g.hd, out.data_ptr<scalar_t>() + p * g.hd * HoWo);
        from_query_side(l, as, l.U, attn.data_ptr<T>() + p * l.U * HoWo);
      }
    });
  });
  return {out, attn};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& pe_in, const at::Tensor& attn_in, int64_t heads, int64_t window, int64_t stride, double scale) {
  const AcmixGeometry g = check_acmix(q_in, k_in, v_in, pe_in, heads, window, stride);
  check_acmix_backward(g, q_in, grad_in, attn_in);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(), pe = pe_in.contiguous();
  const at::Tensor go = grad_in.contiguous(), attn = attn_in.contiguous();
  const ShiftLayout l = shift_layout(g.hd, window, stride, g.Ho, g.Wo);
  const int64_t HW = g.H * g.W, HoWo = g.Ho * g.Wo, planes = g.B * g.heads;
  const auto acc_type = at::toOpMathType(q.scalar_type());
  at::Tensor dq = at::zeros(q.sizes(), q.options().dtype(acc_type));
  at::Tensor dk = at::zeros_like(dq), dv = at::zeros_like(dq);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "acmix_window_attention_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>();
    const scalar_t *pp = pe.data_ptr<scalar_t>(), *gp = go.data_ptr<scalar_t>();
    at::parallel_for(0, planes, 1, [&](int64_t first, int64_t last) {
      Plane w(l, q.options().dtype(acc_type), true);
      at::Tensor gos = at::empty_like(w.qs);  // dO on the query side
      T *qs = w.qs.data_ptr<T>(), *as = w.ws.data_ptr<T>(), *ms = w.ms.data_ptr<T>(), *dls = w.dls.data_ptr<T>();
      T *ks = w.ks.data_ptr<T>(), *vs = w.vs.data_ptr<T>(), *gs = gos.data_ptr<T>();
      for (int64_t p = first; p < last; ++p) {
        const int64_t base = p * g.hd * HW;
        to_query_side(l, qp + base, g.hd, g.H, g.W, stride, qs);
        to_query_side(l, gp + p * g.hd * HoWo, g.hd, g.Ho, g.Wo, 1, gs);
        to_query_side(l, attn.data_ptr<T>() + p * l.U * HoWo, l.U, g.Ho, g.Wo, 1, as);
        to_key_side(l, kp + base, pp, g.H, g.W, ks);
        to_key_side(l, vp + base, static_cast<const scalar_t*>(nullptr), g.H, g.W, vs);
        shift_dot(l, gs, vs, dls);  // dA
        // dlogit = a·(dA − Σ_u a·dA)·scale; zero outside the output pixels, as shift_scatter needs.
        for (int64_t yo = 0; yo < g.Ho; ++yo) {
          for (int64_t x = 0; x < l.row; ++x) {
            const int64_t at = yo * l.row + x;
            const bool real = x >= l.margin && x < l.margin + g.Wo;
            T row = 0;
            for (int64_t u = 0; u < l.U && real; ++u) row += as[u * l.Ho_row() + at] * dls[u * l.Ho_row() + at];
            for (int64_t u = 0; u < l.U; ++u) {
              T& dl = dls[u * l.Ho_row() + at];
              dl = real ? as[u * l.Ho_row() + at] * (dl - row) * T(scale) : T(0);
            }
          }
        }
        shift_sum(l, dls, ks, ms);  // dq on the query side
        shift_scatter(l, dls, qs, ks);  // k − pe's gradient, padded
        shift_scatter(l, as, gs, vs);   // v's gradient, padded
        // Back to (hd, H, W): q at the window centres; k and v fold the padding back (reflections add up).
        T* dqp = dq.data_ptr<T>() + base;
        for (int64_t d = 0; d < g.hd; ++d)
          for (int64_t yo = 0; yo < g.Ho; ++yo)
            for (int64_t xo = 0; xo < g.Wo; ++xo)
              dqp[(d * g.H + yo * stride) * g.W + xo * stride] = ms[d * l.Ho_row() + yo * l.row + l.margin + xo];
        T *dkp = dk.data_ptr<T>() + base, *dvp = dv.data_ptr<T>() + base;
        each_padded(l, g.H, g.W, [&](int64_t at, int64_t pixel) {
          dkp[pixel] += ks[at];
          dvp[pixel] += vs[at];
        });
      }
    });
  });
  const at::Tensor dpe = dk.view({planes, g.hd, g.H, g.W}).sum(0).neg_();
  const auto dt = q.scalar_type();
  return {dq.to(dt), dk.to(dt), dv.to(dt), dpe.to(dt)};
}

}  // namespace

TORCH_LIBRARY_IMPL(translution_ext, CPU, m) {
  m.impl("acmix_window_attention", &forward_cpu);
  m.impl("acmix_window_attention_backward", &backward_cpu);
}

}  // namespace translution_ext
