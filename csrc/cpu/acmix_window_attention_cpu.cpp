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
#include <torch/library.h>

#include "../parallel.h"
#include "../acmix_window_attention.h"
#include "acmix_window_layout.h"

namespace translution_ext {

namespace {

// Asks for the cache lines of [p, p + bytes) to be brought into L2 (for writing: `write`), so
// that a map read or written a stage later does not wait on memory.
inline void prefetch_map(const void* p, int64_t bytes, bool write = false) {
  const char* c = static_cast<const char*>(p);
  for (int64_t at = 0; at < bytes; at += 64) {
    if (write)
      __builtin_prefetch(c + at, 1, 2);
    else
      __builtin_prefetch(c + at, 0, 2);
  }
}

struct Plane {  // one thread's working maps for one plane at a time, zeroed once (see LayoutMaps)
  at::Tensor qs, ws, ms;  // query side: q (or dO) (hd, ...); a (U, ...); output (or dq) (hd, ...)
  at::Tensor dls;         // query side (U, ...): dlogit
  at::Tensor ks, vs;      // key side (hd, ...): k − pe, v; their gradients
  Plane(const ShiftLayout& l, at::TensorOptions o, bool backward)
      : qs(at::zeros({l.hd * l.Ho_row()}, o)), ws(at::zeros({l.U * l.Ho_row()}, o)), ms(at::zeros_like(qs)),
        dls(backward ? at::zeros_like(ws) : at::Tensor()), ks(at::zeros({l.hd * l.key_plane()}, o)),
        vs(at::zeros_like(ks)) {}
};

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                               const at::Tensor& pe_in, int64_t heads, int64_t window, int64_t stride,
                                               double scale) {
  const AcmixGeometry g = check_acmix(q_in, k_in, v_in, pe_in, heads, window, stride);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(), pe = pe_in.contiguous();
  const ShiftLayout l = shift_layout(g.hd, window, stride, g.Ho, g.Wo);
  const LayoutMaps maps(l, g.H, g.W);
  const int64_t HW = g.H * g.W, HoWo = g.Ho * g.Wo;
  const auto acc_type = at::toOpMathType(q.scalar_type());
  at::Tensor out = at::empty({g.B, g.C, g.Ho, g.Wo}, q.options());
  at::Tensor attn = at::empty({g.B, g.heads, l.U, g.Ho, g.Wo}, q.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "acmix_window_attention", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>();
    const scalar_t* pp = pe.data_ptr<scalar_t>();
    parallel_for_items(0, g.B * g.heads, 2 * g.hd * HoWo * l.U, [&](int64_t first, int64_t last) {
      Plane w(l, q.options().dtype(acc_type), false);
      T *qs = w.qs.data_ptr<T>(), *as = w.ws.data_ptr<T>(), *os = w.ms.data_ptr<T>();
      T *ks = w.ks.data_ptr<T>(), *vs = w.vs.data_ptr<T>();
      for (int64_t p = first; p < last; ++p) {
        const int64_t base = p * g.hd * HW;  // channels p·hd.. of the (B·heads·hd, H, W) maps
        // Each map is converted right before its first use (less to keep in cache at a time).
        apply_row_map(maps.centres_in, g.hd, qp + base, qs);
        apply_row_map(maps.key_in, g.hd, kp + base, pp, ks);
        // While a product runs, the maps of the next stages come into cache.
        prefetch_map(vp + base, g.hd * HW * sizeof(scalar_t));
        prefetch_map(attn.data_ptr<T>() + p * l.U * HoWo, l.U * HoWo * sizeof(T), true);
        shift_dot(l, qs, ks, as);
        softmax_u(l, as, scale);
        apply_row_map(maps.outputs_out, l.U, as, attn.data_ptr<T>() + p * l.U * HoWo);
        apply_row_map(maps.key_in, g.hd, vp + base, vs);
        prefetch_map(out.data_ptr<scalar_t>() + p * g.hd * HoWo, g.hd * HoWo * sizeof(scalar_t), true);
        if (p + 1 < last) {
          prefetch_map(qp + base + g.hd * HW, g.hd * HW * sizeof(scalar_t));
          prefetch_map(kp + base + g.hd * HW, g.hd * HW * sizeof(scalar_t));
        }
        shift_sum(l, as, vs, os);
        apply_row_map(maps.outputs_out, g.hd, os, out.data_ptr<scalar_t>() + p * g.hd * HoWo);
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
  const LayoutMaps maps(l, g.H, g.W);
  const int64_t HW = g.H * g.W, HoWo = g.Ho * g.Wo, planes = g.B * g.heads;
  const auto acc_type = at::toOpMathType(q.scalar_type());
  // dq is zero off the window centres (stride > 1); dk and dv are written whole, plane by plane.
  at::Tensor dq = stride > 1 ? at::zeros(q.sizes(), q.options().dtype(acc_type))
                             : at::empty(q.sizes(), q.options().dtype(acc_type));
  at::Tensor dk = at::empty_like(dq), dv = at::empty_like(dq);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "acmix_window_attention_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>();
    const scalar_t *pp = pe.data_ptr<scalar_t>(), *gp = go.data_ptr<scalar_t>();
    parallel_for_items(0, planes, 4 * g.hd * HoWo * l.U, [&](int64_t first, int64_t last) {
      Plane w(l, q.options().dtype(acc_type), true);
      at::Tensor gos = at::zeros_like(w.qs);  // dO on the query side
      T *qs = w.qs.data_ptr<T>(), *as = w.ws.data_ptr<T>(), *ms = w.ms.data_ptr<T>(), *dls = w.dls.data_ptr<T>();
      T *ks = w.ks.data_ptr<T>(), *vs = w.vs.data_ptr<T>(), *gs = gos.data_ptr<T>();
      for (int64_t p = first; p < last; ++p) {
        const int64_t base = p * g.hd * HW;
        // Each map is converted right before its first use and each gradient written back
        // right after it is done (less to keep in cache at a time).  Back to (hd, H, W): q's
        // at the window centres; k's and v's fold the padding back.
        apply_row_map(maps.outputs_in, g.hd, gp + p * g.hd * HoWo, gs);
        apply_row_map(maps.key_in, g.hd, vp + base, vs);
        // While a product runs, the maps of the next stages come into cache.
        prefetch_map(attn.data_ptr<T>() + p * l.U * HoWo, l.U * HoWo * sizeof(T));
        prefetch_map(dv.data_ptr<T>() + base, g.hd * HW * sizeof(T), true);
        shift_dot(l, gs, vs, dls);  // dA
        apply_row_map(maps.outputs_in, l.U, attn.data_ptr<T>() + p * l.U * HoWo, as);
        prefetch_map(kp + base, g.hd * HW * sizeof(scalar_t));
        shift_scatter(l, as, gs, vs);  // v's gradient, padded
        apply_row_map(maps.key_out, g.hd, vs, dv.data_ptr<T>() + base);
        softmax_backward_u(l, as, dls, scale);  // dA -> dlogit
        apply_row_map(maps.key_in, g.hd, kp + base, pp, ks);
        prefetch_map(qp + base, g.hd * HW * sizeof(scalar_t));
        prefetch_map(dq.data_ptr<T>() + base, g.hd * HW * sizeof(T), true);
        shift_sum(l, dls, ks, ms);  // dq on the query side
        apply_row_map(maps.centres_out, g.hd, ms, dq.data_ptr<T>() + base);
        apply_row_map(maps.centres_in, g.hd, qp + base, qs);
        prefetch_map(dk.data_ptr<T>() + base, g.hd * HW * sizeof(T), true);
        if (p + 1 < last) {
          prefetch_map(gp + (p + 1) * g.hd * HoWo, g.hd * HoWo * sizeof(scalar_t));
          prefetch_map(vp + base + g.hd * HW, g.hd * HW * sizeof(scalar_t));
        }
        shift_scatter(l, dls, qs, ks);  // k − pe's gradient, padded
        apply_row_map(maps.key_out, g.hd, ks, dk.data_ptr<T>() + base);
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
