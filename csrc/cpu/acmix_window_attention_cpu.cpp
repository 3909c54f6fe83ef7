// ACmix's attention path on CPU, without unfolded windows (the rule: acmix_window_attention.h).
//
// One work item per (batch, head) plane: it owns that head's q/k/v gradients; the position
// term is shared by every plane, so its gradient goes to per-thread buffers summed in
// thread order (deterministic).  The softmax weights (B, H, ka², Ho, Wo) are returned for
// the backward: ka²/hd times smaller than one unfolded tensor.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../acmix_window_attention.h"

namespace translution_ext {

namespace {

// (hd, HW) channel-major maps -> (HW, hd) in the accumulation type.
template <typename scalar_t, typename acc_t>
std::vector<acc_t> channels_last(const scalar_t* p, int64_t hd, int64_t hw) {
  std::vector<acc_t> t(hd * hw);
  for (int64_t d = 0; d < hd; ++d)
    for (int64_t i = 0; i < hw; ++i) t[i * hd + d] = acc_t(p[d * hw + i]);
  return t;
}

// Pixel index of every window position of every output pixel: (Ho*Wo, window²).  Computed
// once per call so the inner loops do no reflection arithmetic or integer division.
std::vector<int64_t> window_positions(const AcmixGeometry& g) {
  const int64_t U = g.window * g.window, half = g.window / 2;
  std::vector<int64_t> pos(g.Ho * g.Wo * U);
  for (int64_t yo = 0; yo < g.Ho; ++yo)
    for (int64_t xo = 0; xo < g.Wo; ++xo)
      for (int64_t du = 0; du < g.window; ++du)
        for (int64_t dv = 0; dv < g.window; ++dv)
          pos[(yo * g.Wo + xo) * U + du * g.window + dv] =
              reflect(yo * g.stride + du - half, g.H) * g.W + reflect(xo * g.stride + dv - half, g.W);
  return pos;
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                               const at::Tensor& pe_in, int64_t heads, int64_t window, int64_t stride,
                                               double scale) {
  const AcmixGeometry g = check_acmix(q_in, k_in, v_in, pe_in, heads, window, stride);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(), pe = pe_in.contiguous();
  const int64_t U = g.window * g.window, HW = g.H * g.W, HoWo = g.Ho * g.Wo;
  at::Tensor out = at::empty({g.B, g.C, g.Ho, g.Wo}, q.options());
  at::Tensor attn = at::empty({g.B, g.heads, U, g.Ho, g.Wo}, q.options().dtype(at::toOpMathType(q.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "acmix_window_attention", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>();
    const scalar_t* pp = pe.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    acc_t* ap = attn.data_ptr<acc_t>();
    const std::vector<acc_t> pe_t = channels_last<scalar_t, acc_t>(pp, g.hd, HW);
    const std::vector<int64_t> positions = window_positions(g);
    at::parallel_for(0, g.B * g.heads, 1, [&](int64_t first, int64_t last) {
      std::vector<acc_t> logit(U), acc(g.hd);
      for (int64_t bn = first; bn < last; ++bn) {
        const int64_t base = bn * g.hd * HW;  // channel n*hd of batch b: (b*C + n*hd) * HW
        // This head's maps as (pixel, d): the inner products below then read contiguous rows.
        const auto qt = channels_last<scalar_t, acc_t>(qp + base, g.hd, HW);
        const auto kt = channels_last<scalar_t, acc_t>(kp + base, g.hd, HW);
        const auto vt = channels_last<scalar_t, acc_t>(vp + base, g.hd, HW);
        for (int64_t yo = 0; yo < g.Ho; ++yo) {
          for (int64_t xo = 0; xo < g.Wo; ++xo) {
            const int64_t yc = yo * g.stride, xc = xo * g.stride, centre = yc * g.W + xc;
            const acc_t* qc = &qt[centre * g.hd];
            const acc_t* pc = &pe_t[centre * g.hd];
            acc_t peq = 0;  // sum_d q_d * pe[c, d]: the same for every u
            for (int64_t d = 0; d < g.hd; ++d) peq += qc[d] * pc[d];
            acc_t mx = -std::numeric_limits<acc_t>::infinity();
            const int64_t o = yo * g.Wo + xo;
            const int64_t* pos = &positions[o * U];
            for (int64_t u = 0; u < U; ++u) {
              const acc_t* ku = &kt[pos[u] * g.hd];
              const acc_t* pu = &pe_t[pos[u] * g.hd];
              acc_t s = 0;
              for (int64_t d = 0; d < g.hd; ++d) s += qc[d] * (ku[d] - pu[d]);
              logit[u] = s * acc_t(scale) + peq * acc_t(scale);
              mx = std::max(mx, logit[u]);
            }
            acc_t total = 0;
            for (int64_t u = 0; u < U; ++u) total += (logit[u] = std::exp(logit[u] - mx));
            std::fill(acc.begin(), acc.end(), acc_t(0));
            for (int64_t u = 0; u < U; ++u) {
              const acc_t a = logit[u] / total;
              ap[(bn * U + u) * HoWo + o] = a;
              const acc_t* vu = &vt[pos[u] * g.hd];
              for (int64_t d = 0; d < g.hd; ++d) acc[d] += a * vu[d];
            }
            for (int64_t d = 0; d < g.hd; ++d) op[bn * g.hd * HoWo + d * HoWo + o] = static_cast<scalar_t>(acc[d]);
          }
        }
      }
    });
  });
  return {out, attn};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& pe_in, const at::Tensor& attn_in, int64_t heads, int64_t window, int64_t stride, double scale) {
  const AcmixGeometry g = check_acmix(q_in, k_in, v_in, pe_in, heads, window, stride);
  const int64_t U = g.window * g.window, HW = g.H * g.W, HoWo = g.Ho * g.Wo;
  check_acmix_backward(g, q_in, grad_in, attn_in);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(), pe = pe_in.contiguous();
  const at::Tensor go = grad_in.contiguous(), attn = attn_in.contiguous();
  const auto acc_type = at::toOpMathType(q.scalar_type());
  at::Tensor dq = at::zeros(q.sizes(), q.options().dtype(acc_type));
  at::Tensor dk = at::zeros_like(dq), dv = at::zeros_like(dq);
  const int threads = at::get_num_threads();
  std::vector<at::Tensor> dpe_local(threads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "acmix_window_attention_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>();
    const scalar_t *pp = pe.data_ptr<scalar_t>(), *gp = go.data_ptr<scalar_t>();
    const acc_t* ap = attn.data_ptr<acc_t>();
    acc_t *dqp = dq.data_ptr<acc_t>(), *dkp = dk.data_ptr<acc_t>(), *dvp = dv.data_ptr<acc_t>();
    const std::vector<acc_t> pe_t = channels_last<scalar_t, acc_t>(pp, g.hd, HW);
    const std::vector<int64_t> positions = window_positions(g);
    at::parallel_for(0, g.B * g.heads, 1, [&](int64_t first, int64_t last) {
      at::Tensor& mine = dpe_local[at::get_thread_num()];
      if (!mine.defined()) mine = at::zeros({HW, g.hd}, dq.options());  // (pixel, d)
      acc_t* dpp = mine.data_ptr<acc_t>();
      std::vector<acc_t> dlogit(U), gc(g.hd);
      std::vector<acc_t> dqt(HW * g.hd), dkt(HW * g.hd), dvt(HW * g.hd);
      for (int64_t bn = first; bn < last; ++bn) {
        const int64_t base = bn * g.hd * HW;
        const auto qt = channels_last<scalar_t, acc_t>(qp + base, g.hd, HW);
        const auto kt = channels_last<scalar_t, acc_t>(kp + base, g.hd, HW);
        const auto vt = channels_last<scalar_t, acc_t>(vp + base, g.hd, HW);
        std::fill(dqt.begin(), dqt.end(), acc_t(0));
        std::fill(dkt.begin(), dkt.end(), acc_t(0));
        std::fill(dvt.begin(), dvt.end(), acc_t(0));
        for (int64_t yo = 0; yo < g.Ho; ++yo) {
          for (int64_t xo = 0; xo < g.Wo; ++xo) {
            const int64_t yc = yo * g.stride, xc = xo * g.stride, centre = yc * g.W + xc, o = yo * g.Wo + xo;
            const acc_t* qc = &qt[centre * g.hd];
            const acc_t* pc = &pe_t[centre * g.hd];
            for (int64_t d = 0; d < g.hd; ++d) gc[d] = acc_t(gp[bn * g.hd * HoWo + d * HoWo + o]);
            acc_t row = 0;  // sum_u a_u dA_u
            const int64_t* pos = &positions[o * U];
            for (int64_t u = 0; u < U; ++u) {
              const acc_t a = ap[(bn * U + u) * HoWo + o];
              const acc_t* vu = &vt[pos[u] * g.hd];
              acc_t* dvu = &dvt[pos[u] * g.hd];
              acc_t dA = 0;
              for (int64_t d = 0; d < g.hd; ++d) {
                dA += gc[d] * vu[d];
                dvu[d] += a * gc[d];
              }
              dlogit[u] = dA;
              row += a * dA;
            }
            acc_t* dqc = &dqt[centre * g.hd];
            acc_t* dpc = &dpp[centre * g.hd];
            for (int64_t u = 0; u < U; ++u) {
              const acc_t dl = ap[(bn * U + u) * HoWo + o] * (dlogit[u] - row) * acc_t(scale);
              const acc_t* ku = &kt[pos[u] * g.hd];
              const acc_t* pu = &pe_t[pos[u] * g.hd];
              acc_t* dku = &dkt[pos[u] * g.hd];
              acc_t* dpu = &dpp[pos[u] * g.hd];
              for (int64_t d = 0; d < g.hd; ++d) {
                dqc[d] += dl * (ku[d] + pc[d] - pu[d]);
                const acc_t qd = dl * qc[d];
                dku[d] += qd;
                dpc[d] += qd;
                dpu[d] -= qd;
              }
            }
          }
        }
        for (int64_t d = 0; d < g.hd; ++d) {
          for (int64_t i = 0; i < HW; ++i) {
            dqp[base + d * HW + i] = dqt[i * g.hd + d];
            dkp[base + d * HW + i] = dkt[i * g.hd + d];
            dvp[base + d * HW + i] = dvt[i * g.hd + d];
          }
        }
      }
    });
  });
  at::Tensor dpe = at::zeros({HW, g.hd}, dq.options());
  for (auto& t : dpe_local)
    if (t.defined()) dpe.add_(t);
  dpe = dpe.t().reshape({g.hd, g.H, g.W});
  const auto dt = q.scalar_type();
  return {dq.to(dt), dk.to(dt), dv.to(dt), dpe.to(dt)};
}

}  // namespace

TORCH_LIBRARY_IMPL(translution_ext, CPU, m) {
  m.impl("acmix_window_attention", &forward_cpu);
  m.impl("acmix_window_attention_backward", &backward_cpu);
}

}  // namespace translution_ext
