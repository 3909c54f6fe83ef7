// Fused Translution attention, forward: one launch.
//
// A block owns kPlanTileRows query rows x kBatchTile batch items of one head and streams the
// pair groups of its rows (the plan's query segments) in a fixed order, flash-style: per chunk
// it computes q, k and v of the pairs (block GEMMs against the group's table slices), the
// scores, and an online-softmax update of its output rows, which stay in shared memory.  It
// writes only the output and the per-row log-sum-exp.
#include "translution_attention_cuda.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "launch.cuh"
#include "translution_attention_tiles.cuh"

namespace translution_ext::cuda {
namespace {

template <typename scalar_t>
struct ForwardSmem {
  using acc_t = at::opmath_type<scalar_t>;
  unsigned char* scratch;
  acc_t *tile, *q, *out, *score, *weight, *row_max, *row_sum, *rescale;
  ChunkRows* rows;
  __host__ __device__ void carve(SmemCarver& c, int64_t width, int64_t value_width) {
    scratch = c.take<unsigned char>(TileTraits<scalar_t>::kOperandBytes);
    tile = c.take<acc_t>(kBM * TileTraits<scalar_t>::kLdC);
    q = c.take<acc_t>(kBM * width);
    out = c.take<acc_t>(kOwners * value_width);
    score = c.take<acc_t>(kBM);
    weight = c.take<acc_t>(kBM);
    row_max = c.take<acc_t>(kOwners);
    row_sum = c.take<acc_t>(kOwners);
    rescale = c.take<acc_t>(kOwners);
    rows = c.take<ChunkRows>(1);
  }
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, 1)
    attention_forward_kernel(AttentionArgs<scalar_t> a, scalar_t* __restrict__ out,
                             at::opmath_type<scalar_t>* __restrict__ lse) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kLdC = TileTraits<scalar_t>::kLdC;
  extern __shared__ __align__(128) unsigned char smem[];
  const int64_t W = a.width(), Wv = a.value_width(), N = a.N, H = a.H;
  ForwardSmem<scalar_t> s;
  SmemCarver carver{reinterpret_cast<uintptr_t>(smem)};
  s.carve(carver, W, Wv);
  ChunkRows& rows = *s.rows;

  const int64_t tile = blockIdx.x, i0 = tile * kPlanTileRows, h = blockIdx.z;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * kBatchTile, nb = imin(kBatchTile, a.B - b0);
  for (int64_t e = threadIdx.x; e < kOwners * Wv; e += kThreads) s.out[e] = acc_t(0);
  for (int r = threadIdx.x; r < kOwners; r += kThreads) {
    s.row_max[r] = -static_cast<acc_t>(INFINITY);
    s.row_sum[r] = acc_t(0);
  }
  const int32_t* tile_begin = a.plan + a.layout.query_tile_begin;
  const int32_t* segments = a.plan + a.layout.query_segments;
  const int64_t per_chunk = kBM / nb;  // pairs per chunk
  for (int32_t seg = tile_begin[tile]; seg < tile_begin[tile + 1]; ++seg) {
    const int32_t g = segments[3 * seg], first = segments[3 * seg + 1], last = segments[3 * seg + 2];
    const int32_t cq = a.group_class(kQ, g), ck = a.group_class(kK, g), cv = a.group_class(kV, g);
    for (int64_t c0 = first; c0 < last; c0 += per_chunk) {
      __syncthreads();  // the previous chunk's readers of rows, score and weight are done
      tile_chunk(a, rows, nullptr, c0, imin(per_chunk, last - c0), b0, nb, i0, /*by_key=*/false);
      role_rows(a, kQ, rows, cq, h, s.q, s.tile, s.scratch);
      for (int m = threadIdx.x; m < kBM; m += kThreads) s.score[m] = acc_t(0);
      for (int64_t n0 = 0; n0 < W; n0 += kBN) {
        role_tile(a, kK, rows, ck, h, n0, s.tile, s.scratch);
        for (int m = threadIdx.x; m < kBM; m += kThreads) {
          acc_t dot = acc_t(0);
          for (int64_t n = 0; n < kBN && n0 + n < W; ++n) dot += s.q[m * W + n0 + n] * s.tile[m * kLdC + n];
          s.score[m] += dot;
        }
      }
      __syncthreads();
      // Online softmax: the owner of a row folds its run of new scores into its running max and sum.
      for (int r = threadIdx.x; r < kOwners; r += kThreads) {
        const int begin = rows.run_begin[r], end = rows.run_end[r];
        if (begin == end) {
          s.rescale[r] = acc_t(1);
          continue;
        }
        acc_t top = s.row_max[r];
        for (int m = begin; m < end; ++m) top = max(top, s.score[m] * a.scale);
        const acc_t rescale = exp_acc(s.row_max[r] - top);
        acc_t sum = acc_t(0);
        for (int m = begin; m < end; ++m) {
          s.weight[m] = exp_acc(s.score[m] * a.scale - top);
          sum += s.weight[m];
        }
        s.row_max[r] = top;
        s.row_sum[r] = s.row_sum[r] * rescale + sum;
        s.rescale[r] = rescale;
      }
      __syncthreads();
      for (int64_t e = threadIdx.x; e < kOwners * Wv; e += kThreads) s.out[e] *= s.rescale[e / Wv];
      for (int64_t n0 = 0; n0 < Wv; n0 += kBN) {
        role_tile(a, kV, rows, cv, h, n0, s.tile, s.scratch);
        for (int e = threadIdx.x; e < kOwners * kBN; e += kThreads) {
          const int r = e / kBN, n = e % kBN;
          if (n0 + n >= Wv) continue;
          acc_t sum = acc_t(0);
          for (int m = rows.run_begin[r]; m < rows.run_end[r]; ++m) sum += s.weight[m] * s.tile[m * kLdC + n];
          s.out[r * Wv + n0 + n] += sum;
        }
      }
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < kOwners * Wv; e += kThreads) {
    const int64_t r = e / Wv, d = e % Wv, bl = r / kPlanTileRows, i = i0 + r % kPlanTileRows;
    if (bl >= nb || i >= N) continue;
    const acc_t sum = s.row_sum[r];
    out[((b0 + bl) * N + i) * H * Wv + h * Wv + d] = static_cast<scalar_t>(sum > acc_t(0) ? s.out[e] / sum : acc_t(0));
  }
  for (int r = threadIdx.x; r < kOwners; r += kThreads) {
    const int64_t bl = r / kPlanTileRows, i = i0 + r % kPlanTileRows;
    if (bl >= nb || i >= N) continue;
    lse[((b0 + bl) * H + h) * N + i] = s.row_max[r] + log_acc(s.row_sum[r]);
  }
}

}  // namespace

int64_t attention_forward_smem_bytes(at::ScalarType dtype, int64_t width, int64_t value_width) {
  int64_t bytes = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "translution_attention_cuda", [&] {
    bytes = carved_bytes([&](SmemCarver& c) { ForwardSmem<scalar_t>{}.carve(c, width, value_width); });
  });
  return bytes;
}

void attention_forward_launch(const AttentionInputs& in, const AttentionPlan& plan, at::Tensor& out,
                              at::Tensor& lse) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "translution_attention_cuda", [&] {
    const AttentionArgs<scalar_t> args = make_attention_args<scalar_t>(in, plan);
    check_grid_limits(plan);
    const int64_t bytes = attention_forward_smem_bytes(out.scalar_type(), args.width(), args.value_width());
    constexpr auto kernel = attention_forward_kernel<scalar_t>;
    allow_shared_memory(kernel, bytes, "translution_attention");
    const dim3 grid(static_cast<unsigned>(plan.groups->layout.tiles),
                    static_cast<unsigned>((plan.B + kBatchTile - 1) / kBatchTile), static_cast<unsigned>(plan.H));
    launch_kernel<kernel>(grid, kThreads, bytes, at::cuda::getCurrentCUDAStream())(
        args, out.data_ptr<scalar_t>(), lse.data_ptr<at::opmath_type<scalar_t>>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace translution_ext::cuda
