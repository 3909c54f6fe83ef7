// CUDA kernels of the relative-offset projection.
//
// As on the CPU, pairs are grouped by offset class so that every class is a
// dense GEMM with one weight matrix; the gathers happen while the operand
// slices are staged in shared memory (block_gemm.cuh), never in global memory.
//   forward      one block per (tile of kBM rows of one class, kBN columns of D)
//   grad_weight  one block per (class, kBM rows of C, kBN columns of D); the
//                reduction runs over all rows of the class inside the block
//   grad_x       one block per (tile of source tokens x batch, kBN columns of
//                C); it walks the classes of its tokens in increasing order
//                and accumulates in registers
// Every output element is written by exactly one block, in a fixed order:
// no atomics, so all results are deterministic.
#include "../relative_offset_projection.h"
#include "block_gemm.cuh"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "launch.cuh"

#include <climits>

namespace translution_ext::cuda {
namespace {

template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> load_opmath(const scalar_t* p) {
  return static_cast<at::opmath_type<scalar_t>>(*p);
}

// out[b, p, :] = x[b, src(p), :] @ weight[class(p)]
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    relproj_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight,
                           const int64_t* __restrict__ class_offsets,
                           const int64_t* __restrict__ by_class,
                           const int64_t* __restrict__ tile_offsets, Geometry g,
                           scalar_t* __restrict__ out) {
  using T = TileTraits<scalar_t>;
  using acc_t = typename T::acc_t;
  using operand_t = typename T::operand_t;
  __shared__ __align__(128) unsigned char smem[T::kSmemBytes];
  __shared__ int64_t src_row[kBM], dst_row[kBM];

  const int64_t tile = blockIdx.x;
  if (tile >= tile_offsets[g.R]) return;  // the grid is an upper bound
  int64_t lo = 0, hi = g.R;               // class r: tile_offsets[r] <= tile < tile_offsets[r + 1]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (tile_offsets[mid] <= tile) lo = mid; else hi = mid;
  }
  const int64_t r = lo, count = class_offsets[r + 1] - class_offsets[r];
  const int64_t row0 = (tile - tile_offsets[r]) * kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;
  for (int m = threadIdx.x; m < kBM; m += kThreads) {
    const int64_t row = row0 + m;
    if (row < g.B * count) {
      const auto at = g.class_row(by_class + class_offsets[r], count, row);
      src_row[m] = at.x;
      dst_row[m] = at.out;
    } else {
      src_row[m] = dst_row[m] = -1;
    }
  }
  __syncthreads();

  operand_t* As = reinterpret_cast<operand_t*>(smem);
  operand_t* Bs = As + kBM * T::kLdA;
  const scalar_t* w = weight + r * g.C * g.D;
  BlockAccumulator<scalar_t> acc;
  acc.zero();
  for (int64_t k0 = 0; k0 < g.C; k0 += kBK) {
    for (int e = threadIdx.x; e < kBM * kBK; e += kThreads) {
      const int m = e / kBK, k = e % kBK;
      const bool ok = src_row[m] >= 0 && k0 + k < g.C;
      As[m * T::kLdA + k] = to_operand<operand_t>(ok ? load_opmath(x + src_row[m] + k0 + k) : acc_t(0));
    }
    for (int e = threadIdx.x; e < kBK * kBN; e += kThreads) {
      const int k = e / kBN, n = e % kBN;
      const bool ok = k0 + k < g.C && n0 + n < g.D;
      Bs[k * T::kLdB + n] = to_operand<operand_t>(ok ? load_opmath(w + (k0 + k) * g.D + n0 + n) : acc_t(0));
    }
    __syncthreads();
    acc.step(As, Bs);
    __syncthreads();
  }
  for_each_result<scalar_t>(acc, smem, [&](int m, int n, acc_t v) {
    if (dst_row[m] >= 0 && n0 + n < g.D) out[dst_row[m] + n0 + n] = static_cast<scalar_t>(v);
  });
}

// grad_weight[r][c, d] = sum over rows (b, p) of class r of x[b, src(p), c] * grad_out[b, p, d]
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    relproj_grad_weight_kernel(const scalar_t* __restrict__ grad_out,
                               const scalar_t* __restrict__ x,
                               const int64_t* __restrict__ class_offsets,
                               const int64_t* __restrict__ by_class, Geometry g,
                               scalar_t* __restrict__ grad_weight) {
  using T = TileTraits<scalar_t>;
  using acc_t = typename T::acc_t;
  using operand_t = typename T::operand_t;
  __shared__ __align__(128) unsigned char smem[T::kSmemBytes];
  __shared__ int64_t x_row[kBK], g_row[kBK];

  const int64_t r = blockIdx.x;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kBM, d0 = static_cast<int64_t>(blockIdx.z) * kBN;
  const int64_t count = class_offsets[r + 1] - class_offsets[r], rows = g.B * count;
  operand_t* As = reinterpret_cast<operand_t*>(smem);  // As[c][row] = x[row, c0 + c]
  operand_t* Bs = As + kBM * T::kLdA;                   // Bs[row][d] = grad_out[row, d0 + d]
  BlockAccumulator<scalar_t> acc;
  acc.zero();
  for (int64_t k0 = 0; k0 < rows; k0 += kBK) {
    for (int k = threadIdx.x; k < kBK; k += kThreads) {
      const int64_t row = k0 + k;
      if (row < rows) {
        const auto at = g.class_row(by_class + class_offsets[r], count, row);
        x_row[k] = at.x;
        g_row[k] = at.out;
      } else {
        x_row[k] = g_row[k] = -1;
      }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < kBM * kBK; e += kThreads) {
      const int m = e % kBM, k = e / kBM;  // consecutive threads read consecutive c
      const bool ok = x_row[k] >= 0 && c0 + m < g.C;
      As[m * T::kLdA + k] = to_operand<operand_t>(ok ? load_opmath(x + x_row[k] + c0 + m) : acc_t(0));
    }
    for (int e = threadIdx.x; e < kBK * kBN; e += kThreads) {
      const int k = e / kBN, n = e % kBN;
      const bool ok = g_row[k] >= 0 && d0 + n < g.D;
      Bs[k * T::kLdB + n] = to_operand<operand_t>(ok ? load_opmath(grad_out + g_row[k] + d0 + n) : acc_t(0));
    }
    __syncthreads();
    acc.step(As, Bs);
    __syncthreads();
  }
  scalar_t* gw = grad_weight + r * g.C * g.D;
  for_each_result<scalar_t>(acc, smem, [&](int m, int n, acc_t v) {
    if (c0 + m < g.C && d0 + n < g.D) gw[(c0 + m) * g.D + d0 + n] = static_cast<scalar_t>(v);
  });
}

// grad_x[b, s, c] = sum over pairs p with src(p) == s of grad_out[b, p, :] . weight[class(p)][c, :]
// Block rows are (b, s) for tokens_per_block source tokens and kBM / tokens_per_block
// batch entries.  by_src lists each source token's pairs in increasing class
// order, so the block merges its tokens' lists class by class: for one class r
// every row contributes the sum of its grad_out rows of class r (usually one),
// and the block multiplies that slice by weight[r]^T.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    relproj_grad_x_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ weight,
                          const int64_t* __restrict__ src_offsets, const int64_t* __restrict__ by_src,
                          const int64_t* __restrict__ pair_class, Geometry g, int tokens_per_block,
                          scalar_t* __restrict__ grad_x) {
  using T = TileTraits<scalar_t>;
  using acc_t = typename T::acc_t;
  using operand_t = typename T::operand_t;
  __shared__ __align__(128) unsigned char smem[T::kSmemBytes];
  __shared__ int64_t cursor[kBM], run_end[kBM], list_end[kBM], token_class[kBM];
  __shared__ int64_t current_class;

  const int tokens = tokens_per_block, batches = kBM / tokens_per_block;
  const int64_t token_tiles = (g.Ns + tokens - 1) / tokens;
  const int64_t s0 = (blockIdx.x % token_tiles) * tokens;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;
  const int64_t b0 = (blockIdx.x / token_tiles) * batches;
  for (int t = threadIdx.x; t < tokens; t += kThreads) {
    const int64_t s = s0 + t;
    cursor[t] = s < g.Ns ? src_offsets[s] : 0;
    list_end[t] = s < g.Ns ? src_offsets[s + 1] : 0;
    token_class[t] = cursor[t] < list_end[t] ? pair_class[by_src[cursor[t]]] : LLONG_MAX;
  }
  __syncthreads();

  operand_t* As = reinterpret_cast<operand_t*>(smem);  // As[(b, t)][d] = summed grad_out
  operand_t* Bs = As + kBM * T::kLdA;                   // Bs[d][c] = weight[r][c0 + c][d]
  BlockAccumulator<scalar_t> acc;
  acc.zero();
  while (true) {
    if (threadIdx.x == 0) {
      int64_t r = LLONG_MAX;
      for (int t = 0; t < tokens; ++t) r = token_class[t] < r ? token_class[t] : r;
      current_class = r;
    }
    __syncthreads();
    const int64_t r = current_class;
    if (r == LLONG_MAX) break;
    for (int t = threadIdx.x; t < tokens; t += kThreads) {
      int64_t e = cursor[t];
      if (token_class[t] == r)
        while (e < list_end[t] && pair_class[by_src[e]] == r) ++e;
      run_end[t] = e;  // rows of class r for token t: by_src[cursor[t] : run_end[t]]
    }
    __syncthreads();
    const scalar_t* w = weight + r * g.C * g.D;
    for (int64_t k0 = 0; k0 < g.D; k0 += kBK) {
      for (int e = threadIdx.x; e < kBM * kBK; e += kThreads) {
        const int m = e / kBK, k = e % kBK, t = m % tokens;
        const int64_t b = b0 + m / tokens;
        acc_t v = 0;
        if (b < g.B && k0 + k < g.D) {
          const scalar_t* go = grad_out + b * g.pairs() * g.D + k0 + k;
          for (int64_t q = cursor[t]; q < run_end[t]; ++q) v += load_opmath(go + by_src[q] * g.D);
        }
        As[m * T::kLdA + k] = to_operand<operand_t>(v);
      }
      for (int e = threadIdx.x; e < kBK * kBN; e += kThreads) {
        const int k = e % kBK, n = e / kBK;  // consecutive threads read consecutive d
        const bool ok = k0 + k < g.D && n0 + n < g.C;
        Bs[k * T::kLdB + n] = to_operand<operand_t>(ok ? load_opmath(w + (n0 + n) * g.D + k0 + k) : acc_t(0));
      }
      __syncthreads();
      acc.step(As, Bs);
      __syncthreads();
    }
    for (int t = threadIdx.x; t < tokens; t += kThreads) {
      cursor[t] = run_end[t];
      token_class[t] = cursor[t] < list_end[t] ? pair_class[by_src[cursor[t]]] : LLONG_MAX;
    }
    __syncthreads();
  }
  for_each_result<scalar_t>(acc, smem, [&](int m, int n, acc_t v) {
    const int64_t s = s0 + m % tokens, b = b0 + m / tokens;
    if (s < g.Ns && b < g.B && n0 + n < g.C)
      grad_x[(b * g.Ns + s) * g.C + n0 + n] = static_cast<scalar_t>(v);
  });
}

#define RELPROJ_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

at::Tensor relproj_forward_cuda(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& index, c10::string_view side) {
  Problem pb = prepare_forward(x, weight, index, side);  // checks devices first
  const c10::cuda::CUDAGuard guard(x.device());
  if (pb.trivial) return pb.result;
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  const PairPlan plan = build_pair_plan(index, pb.g.R, pb.side, /*src_block=*/0);
  // Tiles of kBM rows per class; the grid is an upper bound so the host never
  // waits for the counts.
  const at::Tensor counts = plan.class_offsets.diff();
  const at::Tensor tiles = (counts * pb.g.B + (kBM - 1)).div(kBM, "floor");
  const at::Tensor tile_offsets = at::cat({at::zeros({1}, tiles.options()), tiles.cumsum(0)});
  const dim3 grid(ceil_div(pb.g.B * pb.g.pairs(), kBM) + pb.g.R, ceil_div(pb.g.D, kBN));
  auto stream = at::cuda::getCurrentCUDAStream();
  RELPROJ_DISPATCH(x.scalar_type(), "relproj_forward_cuda", [&] {
    launch_kernel<relproj_forward_kernel<scalar_t>>(grid, kThreads, 0, stream)(
        xc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(),
        plan.class_offsets.const_data_ptr<int64_t>(), plan.by_class.const_data_ptr<int64_t>(),
        tile_offsets.const_data_ptr<int64_t>(), pb.g, pb.result.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return pb.result;
}

at::Tensor relproj_grad_weight_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                    const at::Tensor& index, c10::string_view side,
                                    int64_t num_classes) {
  Problem pb = prepare_grad_weight(grad_out, x, index, side, num_classes);  // checks devices first
  const c10::cuda::CUDAGuard guard(grad_out.device());
  if (pb.trivial) return pb.result;
  const at::Tensor go = grad_out.contiguous(), xc = x.contiguous();
  const PairPlan plan = build_pair_plan(index, pb.g.R, pb.side, /*src_block=*/0);
  const dim3 grid(pb.g.R, ceil_div(pb.g.C, kBM), ceil_div(pb.g.D, kBN));
  auto stream = at::cuda::getCurrentCUDAStream();
  RELPROJ_DISPATCH(grad_out.scalar_type(), "relproj_grad_weight_cuda", [&] {
    launch_kernel<relproj_grad_weight_kernel<scalar_t>>(grid, kThreads, 0, stream)(
        go.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
        plan.class_offsets.const_data_ptr<int64_t>(), plan.by_class.const_data_ptr<int64_t>(), pb.g,
        pb.result.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return pb.result;
}

at::Tensor relproj_grad_x_cuda(const at::Tensor& grad_out, const at::Tensor& weight,
                               const at::Tensor& index, c10::string_view side) {
  Problem pb = prepare_grad_x(grad_out, weight, index, side);  // checks devices first
  const c10::cuda::CUDAGuard guard(grad_out.device());
  if (pb.trivial) return pb.result;
  const at::Tensor go = grad_out.contiguous(), wc = weight.contiguous();
  const PairPlan plan = build_pair_plan(index, pb.g.R, pb.side, /*src_block=*/1);
  // Rows of a block: up to 4 batch entries x (kBM / batches) source tokens, so
  // every weight slice loaded serves several batch entries.
  const int batches = pb.g.B >= 4 ? 4 : (pb.g.B >= 2 ? 2 : 1);
  const int tokens = kBM / batches;
  // Token tiles x batch groups go in grid.x (gridDim.z is limited to 65535).
  const int64_t token_tiles = ceil_div(pb.g.Ns, tokens);
  const dim3 grid(token_tiles * ceil_div(pb.g.B, batches), ceil_div(pb.g.C, kBN));
  auto stream = at::cuda::getCurrentCUDAStream();
  RELPROJ_DISPATCH(grad_out.scalar_type(), "relproj_grad_x_cuda", [&] {
    launch_kernel<relproj_grad_x_kernel<scalar_t>>(grid, kThreads, 0, stream)(
        go.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(),
        plan.src_offsets.const_data_ptr<int64_t>(), plan.by_src.const_data_ptr<int64_t>(),
        plan.pair_class.const_data_ptr<int64_t>(), pb.g, tokens,
        pb.result.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return pb.result;
}

}  // namespace

TORCH_LIBRARY_IMPL(translution_ext, TRANSLUTION_EXT_CUDA_KEY, m) {
  m.impl("relative_offset_projection", &relproj_forward_cuda);
  m.impl("relative_offset_projection_grad_x", &relproj_grad_x_cuda);
  m.impl("relative_offset_projection_grad_weight", &relproj_grad_weight_cuda);
}

}  // namespace translution_ext::cuda
