// ACmix's windowed attention on CUDA (spec: acmix.md; the rule is in acmix_window_attention.h).
//
// forward:  one thread per (batch*head, output pixel): logits over the window, softmax, and
//           the weighted sum of v, reading q/k/v/pe in place (no unfolded windows).
// backward: (1) one thread per (batch*head, output pixel) turns grad_out into the logit
//           gradients (kept in a (B, heads, ka², Ho, Wo) scratch) and writes dq at the centre;
//           (2) one thread per input element gathers dk, dv and its share of dpe from every
//           (output pixel, window position) that read it — the reflection is inverted, so
//           there are no atomics and the result is deterministic.  dpe's per-plane shares are
//           summed over batch*head by at::sum.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "launch.cuh"

#include <limits>

#include "../acmix_window_attention.h"

namespace translution_ext {

namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)); }

__device__ inline float exp_of(float x) { return expf(x); }
__device__ inline double exp_of(double x) { return exp(x); }

// Pixel index of window position (du, dv) around centre (yc, xc).
__device__ inline int64_t window_pixel(const AcmixGeometry& g, int64_t yc, int64_t xc, int64_t du, int64_t dv) {
  const int64_t half = g.window / 2;
  return reflect(yc + du - half, g.H) * g.W + reflect(xc + dv - half, g.W);
}

// Output pixel i of the (batch*head, Ho*Wo) grid: its plane, index and window centre.
struct OutputPixel {
  int64_t bn, o, yc, xc, centre;
};

__device__ inline OutputPixel output_pixel(const AcmixGeometry& g, int64_t i) {
  const int64_t HoWo = g.Ho * g.Wo, o = i % HoWo;
  const int64_t yc = (o / g.Wo) * g.stride, xc = (o % g.Wo) * g.stride;
  return {i / HoWo, o, yc, xc, yc * g.W + xc};
}

template <typename scalar_t, typename acc_t>
__global__ void acmix_forward_kernel(const scalar_t* q, const scalar_t* k, const scalar_t* v, const scalar_t* pe,
                                     scalar_t* out, acc_t* attn, AcmixGeometry g, acc_t scale) {
  const int64_t HW = g.H * g.W, HoWo = g.Ho * g.Wo, U = g.window * g.window;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < g.B * g.heads * HoWo;
       i += int64_t(gridDim.x) * blockDim.x) {
    const auto [bn, o, yc, xc, centre] = output_pixel(g, i);
    const scalar_t *qb = q + bn * g.hd * HW, *kb = k + bn * g.hd * HW, *vb = v + bn * g.hd * HW;
    acc_t* a = attn + bn * U * HoWo + o;  // a[u * HoWo]
    acc_t peq = 0;                        // sum_d q[c, d] * pe[c, d]: the same for every u
    for (int64_t d = 0; d < g.hd; ++d) peq += acc_t(qb[d * HW + centre]) * acc_t(pe[d * HW + centre]);
    acc_t mx = -std::numeric_limits<acc_t>::infinity();
    for (int64_t u = 0; u < U; ++u) {
      const int64_t p = window_pixel(g, yc, xc, u / g.window, u % g.window);
      acc_t s = peq;
      for (int64_t d = 0; d < g.hd; ++d)
        s += acc_t(qb[d * HW + centre]) * (acc_t(kb[d * HW + p]) - acc_t(pe[d * HW + p]));
      a[u * HoWo] = s * scale;
      mx = max(mx, s * scale);
    }
    acc_t sum = 0;
    for (int64_t u = 0; u < U; ++u) sum += (a[u * HoWo] = exp_of(a[u * HoWo] - mx));
    const acc_t inv = acc_t(1) / sum;
    for (int64_t u = 0; u < U; ++u) a[u * HoWo] *= inv;
    for (int64_t d = 0; d < g.hd; ++d) {
      acc_t acc = 0;
      for (int64_t u = 0; u < U; ++u)
        acc += a[u * HoWo] * acc_t(vb[d * HW + window_pixel(g, yc, xc, u / g.window, u % g.window)]);
      out[(bn * g.hd + d) * HoWo + o] = static_cast<scalar_t>(acc);
    }
  }
}

// dlogit_u = a_u (dA_u - sum_w a_w dA_w) * scale with dA_u = <grad_out[o], v[p_u]>; dq at the centre.
template <typename scalar_t, typename acc_t>
__global__ void acmix_backward_centre_kernel(const scalar_t* grad, const scalar_t* q, const scalar_t* k,
                                             const scalar_t* v, const scalar_t* pe, const acc_t* attn, acc_t* dlogit,
                                             acc_t* rowsum, acc_t* dq, AcmixGeometry g, acc_t scale) {
  const int64_t HW = g.H * g.W, HoWo = g.Ho * g.Wo, U = g.window * g.window;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < g.B * g.heads * HoWo;
       i += int64_t(gridDim.x) * blockDim.x) {
    const auto [bn, o, yc, xc, centre] = output_pixel(g, i);
    const scalar_t *kb = k + bn * g.hd * HW, *vb = v + bn * g.hd * HW, *gb = grad + bn * g.hd * HoWo;
    const acc_t* a = attn + bn * U * HoWo + o;
    acc_t* dl = dlogit + bn * U * HoWo + o;
    acc_t row = 0;
    for (int64_t u = 0; u < U; ++u) {
      const int64_t p = window_pixel(g, yc, xc, u / g.window, u % g.window);
      acc_t dA = 0;
      for (int64_t d = 0; d < g.hd; ++d) dA += acc_t(gb[d * HoWo + o]) * acc_t(vb[d * HW + p]);
      dl[u * HoWo] = dA;
      row += a[u * HoWo] * dA;
    }
    acc_t total_dl = 0;
    for (int64_t u = 0; u < U; ++u) {
      const acc_t x = a[u * HoWo] * (dl[u * HoWo] - row) * scale;
      dl[u * HoWo] = x;
      total_dl += x;
    }
    rowsum[i] = total_dl;
    for (int64_t d = 0; d < g.hd; ++d) {  // dq[c] = sum_u dl_u (k[p_u] - pe[p_u]) + (sum_u dl_u) pe[c]
      acc_t acc = total_dl * acc_t(pe[d * HW + centre]);
      for (int64_t u = 0; u < U; ++u) {
        const int64_t p = window_pixel(g, yc, xc, u / g.window, u % g.window);
        acc += dl[u * HoWo] * (acc_t(kb[d * HW + p]) - acc_t(pe[d * HW + p]));
      }
      dq[(bn * g.hd + d) * HW + centre] = acc;
    }
  }
}

// The window rows/columns that read input row y: an unreflected coordinate r in {y, -y, 2(H-1)-y}
// (each once) at window offset du means centre r - du + half.
struct Sources {
  int64_t r[3];
  int n;
};

__device__ inline Sources sources(int64_t y, int64_t n) {
  Sources s{{y, 0, 0}, 1};
  if (y > 0) s.r[s.n++] = -y;
  if (y < n - 1) s.r[s.n++] = 2 * (n - 1) - y;
  return s;
}

template <typename scalar_t, typename acc_t>
__global__ void acmix_backward_gather_kernel(const scalar_t* grad, const scalar_t* q, const acc_t* attn,
                                             const acc_t* dlogit, const acc_t* rowsum, acc_t* dk, acc_t* dv,
                                             acc_t* dpe_planes, AcmixGeometry g) {
  const int64_t HW = g.H * g.W, HoWo = g.Ho * g.Wo, U = g.window * g.window, half = g.window / 2;
  const int64_t total = g.B * g.C * HW;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = i % HW, d = (i / HW) % g.hd, bn = i / (g.hd * HW);
    const int64_t y = p / g.W, x = p % g.W;
    const scalar_t* qd = q + (bn * g.hd + d) * HW;
    const scalar_t* gd = grad + (bn * g.hd + d) * HoWo;
    const acc_t* a = attn + bn * U * HoWo;
    const acc_t* dl = dlogit + bn * U * HoWo;
    acc_t sk = 0, sv = 0;
    const Sources rows = sources(y, g.H), cols = sources(x, g.W);
    for (int ri = 0; ri < rows.n; ++ri) {
      for (int64_t du = 0; du < g.window; ++du) {
        const int64_t yc = rows.r[ri] - du + half;
        if (yc < 0 || yc >= g.H || yc % g.stride) continue;
        for (int ci = 0; ci < cols.n; ++ci) {
          for (int64_t dv_ = 0; dv_ < g.window; ++dv_) {
            const int64_t xc = cols.r[ci] - dv_ + half;
            if (xc < 0 || xc >= g.W || xc % g.stride) continue;
            const int64_t o = (yc / g.stride) * g.Wo + xc / g.stride, u = du * g.window + dv_;
            sk += dl[u * HoWo + o] * acc_t(qd[yc * g.W + xc]);
            sv += a[u * HoWo + o] * acc_t(gd[o]);
          }
        }
      }
    }
    dk[i] = sk;
    dv[i] = sv;
    // pe enters every logit as +pe[c] - pe[p_u]: this pixel's share is its centre term minus dk.
    acc_t centre = 0;
    if (y % g.stride == 0 && x % g.stride == 0)
      centre = acc_t(qd[p]) * rowsum[bn * HoWo + (y / g.stride) * g.Wo + x / g.stride];
    dpe_planes[i] = centre - sk;
  }
}

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                                const at::Tensor& pe_in, int64_t heads, int64_t window, int64_t stride,
                                                double scale) {
  const AcmixGeometry g = check_acmix(q_in, k_in, v_in, pe_in, heads, window, stride);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(), pe = pe_in.contiguous();
  at::Tensor out = at::empty({g.B, g.C, g.Ho, g.Wo}, q.options());
  at::Tensor attn = at::empty({g.B, g.heads, g.window * g.window, g.Ho, g.Wo},
                              q.options().dtype(at::toOpMathType(q.scalar_type())));
  if (out.numel() == 0) {  // C == 0: every logit is 0, so the weights are uniform (as on the CPU)
    attn.fill_(1.0 / static_cast<double>(g.window * g.window));
    return {out, attn};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "acmix_window_attention", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_kernel<acmix_forward_kernel<scalar_t, acc_t>>(blocks_for(g.B * g.heads * g.Ho * g.Wo), kThreads, 0, at::cuda::getCurrentCUDAStream())(
            q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), pe.data_ptr<scalar_t>(),
            out.data_ptr<scalar_t>(), attn.data_ptr<acc_t>(), g, acc_t(scale));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, attn};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& pe_in, const at::Tensor& attn_in, int64_t heads, int64_t window, int64_t stride, double scale) {
  const AcmixGeometry g = check_acmix(q_in, k_in, v_in, pe_in, heads, window, stride);
  check_acmix_backward(g, q_in, grad_in, attn_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(), pe = pe_in.contiguous();
  const at::Tensor grad = grad_in.contiguous(), attn = attn_in.contiguous();
  const auto acc_type = at::toOpMathType(q.scalar_type());
  const auto acc = q.options().dtype(acc_type);
  at::Tensor dq = at::zeros(q.sizes(), acc), dk = at::empty(q.sizes(), acc), dv = at::empty(q.sizes(), acc);
  at::Tensor dpe_planes = at::empty(q.sizes(), acc);  // (B, heads*hd, H, W): each plane's share
  at::Tensor dlogit = at::empty_like(attn), rowsum = at::empty({g.B * g.heads, g.Ho * g.Wo}, acc);
  const auto dt = q.scalar_type();
  if (q.numel() == 0)
    return {dq.to(dt), dk.to(dt), dv.to(dt), at::zeros(pe.sizes(), pe.options())};
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "acmix_window_attention_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_kernel<acmix_backward_centre_kernel<scalar_t, acc_t>>(blocks_for(g.B * g.heads * g.Ho * g.Wo), kThreads, 0, stream)(
        grad.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
        pe.data_ptr<scalar_t>(), attn.data_ptr<acc_t>(), dlogit.data_ptr<acc_t>(), rowsum.data_ptr<acc_t>(),
        dq.data_ptr<acc_t>(), g, acc_t(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_kernel<acmix_backward_gather_kernel<scalar_t, acc_t>>(blocks_for(q.numel()), kThreads, 0, stream)(
        grad.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), attn.data_ptr<acc_t>(), dlogit.data_ptr<acc_t>(),
        rowsum.data_ptr<acc_t>(), dk.data_ptr<acc_t>(), dv.data_ptr<acc_t>(), dpe_planes.data_ptr<acc_t>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor dpe = dpe_planes.view({g.B * g.heads, g.hd, g.H, g.W}).sum(0);
  return {dq.to(dt), dk.to(dt), dv.to(dt), dpe.to(dt)};
}

}  // namespace

TORCH_LIBRARY_IMPL(translution_ext, TRANSLUTION_EXT_CUDA_KEY, m) {
  m.impl("acmix_window_attention", &forward_cuda);
  m.impl("acmix_window_attention_backward", &backward_cuda);
}

}  // namespace translution_ext
