// Fused Translution attention, backward: three launches (a fourth casts fp32 gradients to
// fp16/bf16).  With a_ij = exp(s_ij - lse_i) and ds_ij = scale a_ij (<dO_i, v_ij> - <dO_i, O_i>):
//   dq_ij = ds_ij k_ij,  dk_ij = ds_ij q_ij,  dv_ij = a_ij dO_i        (per head)
// Every gradient element has one owning block, which adds its terms in a fixed order:
//   query pass  block = (query tile, batch tile), heads in order: recomputes q, k, v and the
//               scores, stores a and ds per (batch, head, pair) — the only O(B H N^2) buffer,
//               scalars — and accumulates q's shared gradient and q_source's gradient
//               (ds k_ij @ q_table[class]^T) of its rows.
//   key pass    block = (key tile, batch tile), heads in order: reads a and ds, recomputes q,
//               and accumulates k's and v's shared gradients and k_source's and v_source's.
//   table pass  block = (pair group, head): owns that group's table rows (one per role) for
//               the head's columns: source^T @ (the pairs' relative gradients), over all the
//               group's pairs and batch items.
// Accumulators live in global memory in the compute type (fp32 for fp16/bf16, then cast).
#include "translution_attention_cuda.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "launch.cuh"
#include "translution_attention_tiles.cuh"

namespace translution_ext::cuda {
namespace {

template <typename scalar_t>
struct BackwardSmem {
  using acc_t = at::opmath_type<scalar_t>;
  unsigned char* scratch;
  acc_t *tile, *q, *k, *score, *weight, *dscore, *row_term, *row_lse;
  ChunkRows* rows;
  __host__ __device__ void carve(SmemCarver& c, int64_t width) {
    scratch = c.take<unsigned char>(TileTraits<scalar_t>::kOperandBytes);
    tile = c.take<acc_t>(kBM * TileTraits<scalar_t>::kLdC);
    q = c.take<acc_t>(kBM * width);
    k = c.take<acc_t>(kBM * width);
    score = c.take<acc_t>(kBM);
    weight = c.take<acc_t>(kBM);
    dscore = c.take<acc_t>(kBM);
    row_term = c.take<acc_t>(kOwners);
    row_lse = c.take<acc_t>(kOwners);
    rows = c.take<ChunkRows>(1);
  }
};

// Gradient accumulators (compute type) and the per-pair buffers.
template <typename acc_t>
struct BackwardBuffers {
  acc_t* shared[3];  // (B, N, H*ds) per role, or null
  acc_t* source[3];  // (B, N, C) per role, or null
  acc_t* table[3];   // (R, C, H*dr) per role, or null
  int64_t table_numel[3];
  acc_t *weight, *dscore;  // (B, H, P): a and ds
};

// acc[owner's row][col0 + n] += sum over the owner's run of value(m, n), for n < count.
// `row_of(r)` gives the accumulator row of owner r (or null when it has none).
template <typename acc_t, typename RowOf, typename Value>
__device__ void add_runs(const ChunkRows& rows, int64_t count, const RowOf& row_of, const Value& value) {
  for (int64_t e = threadIdx.x; e < kOwners * count; e += kThreads) {
    const int r = static_cast<int>(e / count);
    const int64_t n = e % count;
    const int begin = rows.run_begin[r], end = rows.run_end[r];
    if (begin == end) continue;
    acc_t sum = acc_t(0);
    for (int m = begin; m < end; ++m) sum += value(m, n);
    row_of(r)[n] += sum;
  }
}

// grad_source[rows] += G @ table[cls][:, head columns]^T, G (chunk rows x dr) given by
// g(m, n): the relative part of a role's per-pair gradient.
template <typename scalar_t, typename Grad>
__device__ void add_source_grad(const AttentionArgs<scalar_t>& a, int role_index, const ChunkRows& rows, int32_t cls,
                                int64_t h, int64_t t0, const Grad& g, at::opmath_type<scalar_t>* grad_source,
                                at::opmath_type<scalar_t>* tile, unsigned char* scratch) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kLdC = TileTraits<scalar_t>::kLdC;
  const Role<scalar_t>& r = a.role[role_index];
  const scalar_t* w = r.table + static_cast<int64_t>(cls) * r.C * a.H * r.dr + h * r.dr;
  for (int64_t c0 = 0; c0 < r.C; c0 += kBN) {
    tile_gemm<scalar_t>(
        r.dr, [&](int m, int64_t n) -> acc_t { return rows.valid(m) ? g(m, n) : acc_t(0); },
        [&](int64_t n, int c) -> acc_t { return c0 + c < r.C ? load_acc(w + (c0 + c) * a.H * r.dr + n) : acc_t(0); },
        tile, scratch);
    const int64_t cols = imin(kBN, r.C - c0);
    add_runs<acc_t>(
        rows, cols,
        [&](int o) {
          const int64_t b = rows.b[rows.run_begin[o]], t = t0 + o % kPlanTileRows;
          return grad_source + (b * a.N + t) * r.C + c0;
        },
        [&](int m, int64_t c) { return tile[m * kLdC + c]; });
    __syncthreads();
  }
}

// Zeroes this block's rows (tokens [t0, t0 + kPlanTileRows) x batch items [b0, b0 + nb)) of a
// (B, N, width) accumulator.
template <typename acc_t>
__device__ void zero_rows(acc_t* acc, int64_t N, int64_t width, int64_t b0, int64_t nb, int64_t t0) {
  if (acc == nullptr) return;
  const int64_t tokens = imin(kPlanTileRows, N - t0);
  for (int64_t e = threadIdx.x; e < nb * tokens * width; e += kThreads) {
    const int64_t bl = e / (tokens * width), rest = e % (tokens * width);
    acc[((b0 + bl) * N + t0 + rest / width) * width + rest % width] = acc_t(0);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, 1) attention_backward_query_kernel(
    AttentionArgs<scalar_t> a, const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ out,
    const at::opmath_type<scalar_t>* __restrict__ lse, BackwardBuffers<at::opmath_type<scalar_t>> buf) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kLdC = TileTraits<scalar_t>::kLdC;
  extern __shared__ __align__(128) unsigned char smem[];
  const int64_t W = a.width(), Wv = a.value_width(), N = a.N, H = a.H, P = a.layout.pairs;
  BackwardSmem<scalar_t> s;
  SmemCarver carver{reinterpret_cast<uintptr_t>(smem)};
  s.carve(carver, W);
  ChunkRows& rows = *s.rows;
  const Role<scalar_t>& rq = a.role[kQ];

  // The table accumulators are owned by the table pass, which runs after this one: clear them.
  const int64_t block = blockIdx.x + static_cast<int64_t>(blockIdx.y) * gridDim.x;
  const int64_t blocks = static_cast<int64_t>(gridDim.x) * gridDim.y;
  for (int role = 0; role < 3; ++role)
    if (buf.table[role])
      for (int64_t e = block * kThreads + threadIdx.x; e < buf.table_numel[role]; e += blocks * kThreads)
        buf.table[role][e] = acc_t(0);

  const int64_t tile = blockIdx.x, i0 = tile * kPlanTileRows;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * kBatchTile, nb = imin(kBatchTile, a.B - b0);
  zero_rows(buf.shared[kQ], N, H * rq.ds, b0, nb, i0);
  zero_rows(buf.source[kQ], N, rq.C, b0, nb, i0);
  const int32_t* tile_begin = a.plan + a.layout.query_tile_begin;
  const int32_t* segments = a.plan + a.layout.query_segments;
  const int64_t per_chunk = kBM / nb;
  for (int64_t h = 0; h < H; ++h) {
    __syncthreads();
    for (int r = threadIdx.x; r < kOwners; r += kThreads) {  // <dO_i, O_i> and lse_i of the head
      const int64_t bl = r / kPlanTileRows, i = i0 + r % kPlanTileRows;
      if (bl >= nb || i >= N) continue;
      const int64_t at = ((b0 + bl) * N + i) * H * Wv + h * Wv;
      acc_t term = acc_t(0);
      for (int64_t d = 0; d < Wv; ++d) term += load_acc(grad_out + at + d) * load_acc(out + at + d);
      s.row_term[r] = term;
      s.row_lse[r] = lse[((b0 + bl) * H + h) * N + i];
    }
    for (int32_t seg = tile_begin[tile]; seg < tile_begin[tile + 1]; ++seg) {
      const int32_t g = segments[3 * seg], first = segments[3 * seg + 1], last = segments[3 * seg + 2];
      const int32_t cq = a.group_class(kQ, g), ck = a.group_class(kK, g), cv = a.group_class(kV, g);
      for (int64_t c0 = first; c0 < last; c0 += per_chunk) {
        __syncthreads();
        tile_chunk(a, rows, nullptr, c0, imin(per_chunk, last - c0), b0, nb, i0, false);
        role_rows(a, kQ, rows, cq, h, s.q, s.tile, s.scratch);
        role_rows(a, kK, rows, ck, h, s.k, s.tile, s.scratch);
        for (int m = threadIdx.x; m < kBM; m += kThreads) {
          acc_t dot = acc_t(0);
          for (int64_t n = 0; n < W; ++n) dot += s.q[m * W + n] * s.k[m * W + n];
          s.score[m] = dot;
          s.dscore[m] = acc_t(0);  // <dO_i, v_ij> until the next step
        }
        for (int64_t n0 = 0; n0 < Wv; n0 += kBN) {
          role_tile(a, kV, rows, cv, h, n0, s.tile, s.scratch);
          for (int m = threadIdx.x; m < kBM; m += kThreads) {
            if (!rows.valid(m)) continue;
            const scalar_t* dO = grad_out + (static_cast<int64_t>(rows.b[m]) * N + rows.i[m]) * H * Wv + h * Wv;
            acc_t dot = acc_t(0);
            for (int64_t n = 0; n < kBN && n0 + n < Wv; ++n) dot += load_acc(dO + n0 + n) * s.tile[m * kLdC + n];
            s.dscore[m] += dot;
          }
        }
        __syncthreads();
        for (int m = threadIdx.x; m < kBM; m += kThreads) {
          if (!rows.valid(m)) {
            s.weight[m] = s.dscore[m] = acc_t(0);
            continue;
          }
          const int o = rows.owner[m];
          const acc_t w = exp_acc(s.score[m] * a.scale - s.row_lse[o]);
          const acc_t ds = a.scale * w * (s.dscore[m] - s.row_term[o]);
          s.weight[m] = w;
          s.dscore[m] = ds;
          const int64_t at = (static_cast<int64_t>(rows.b[m]) * H + h) * P + rows.p[m];
          buf.weight[at] = w;
          buf.dscore[at] = ds;
        }
        __syncthreads();
        if (rq.ds > 0)
          add_runs<acc_t>(
              rows, rq.ds,
              [&](int o) {
                const int64_t b = rows.b[rows.run_begin[o]], i = i0 + o % kPlanTileRows;
                return buf.shared[kQ] + (b * N + i) * H * rq.ds + h * rq.ds;
              },
              [&](int m, int64_t d) { return s.dscore[m] * s.k[m * W + d]; });
        if (rq.dr > 0)
          add_source_grad(
              a, kQ, rows, cq, h, i0, [&](int m, int64_t n) { return s.dscore[m] * s.k[m * W + rq.ds + n]; },
              buf.source[kQ], s.tile, s.scratch);
      }
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, 1) attention_backward_key_kernel(
    AttentionArgs<scalar_t> a, const scalar_t* __restrict__ grad_out, BackwardBuffers<at::opmath_type<scalar_t>> buf) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(128) unsigned char smem[];
  const int64_t W = a.width(), Wv = a.value_width(), N = a.N, H = a.H, P = a.layout.pairs;
  BackwardSmem<scalar_t> s;
  SmemCarver carver{reinterpret_cast<uintptr_t>(smem)};
  s.carve(carver, W);
  ChunkRows& rows = *s.rows;
  const Role<scalar_t>&rk = a.role[kK], &rv = a.role[kV];

  const int64_t tile = blockIdx.x, j0 = tile * kPlanTileRows;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * kBatchTile, nb = imin(kBatchTile, a.B - b0);
  zero_rows(buf.shared[kK], N, H * rk.ds, b0, nb, j0);
  zero_rows(buf.source[kK], N, rk.C, b0, nb, j0);
  zero_rows(buf.shared[kV], N, H * rv.ds, b0, nb, j0);
  zero_rows(buf.source[kV], N, rv.C, b0, nb, j0);
  const int32_t* tile_begin = a.plan + a.layout.key_tile_begin;
  const int32_t* segments = a.plan + a.layout.key_segments;
  const int32_t* key_order = a.plan + a.layout.key_order;
  const int64_t per_chunk = kBM / nb;
  for (int64_t h = 0; h < H; ++h) {
    for (int32_t seg = tile_begin[tile]; seg < tile_begin[tile + 1]; ++seg) {
      const int32_t g = segments[3 * seg], first = segments[3 * seg + 1], last = segments[3 * seg + 2];
      const int32_t cq = a.group_class(kQ, g), ck = a.group_class(kK, g), cv = a.group_class(kV, g);
      for (int64_t c0 = first; c0 < last; c0 += per_chunk) {
        __syncthreads();
        tile_chunk(a, rows, key_order, c0, imin(per_chunk, last - c0), b0, nb, j0, true);
        for (int m = threadIdx.x; m < kBM; m += kThreads) {
          const int64_t at = rows.valid(m) ? (static_cast<int64_t>(rows.b[m]) * H + h) * P + rows.p[m] : -1;
          s.weight[m] = at >= 0 ? buf.weight[at] : acc_t(0);
          s.dscore[m] = at >= 0 ? buf.dscore[at] : acc_t(0);
        }
        role_rows(a, kQ, rows, cq, h, s.q, s.tile, s.scratch);  // ends with a barrier
        auto key_row = [&](acc_t* base, int64_t width, int64_t head_offset) {
          return [=, &rows](int o) {
            const int64_t b = rows.b[rows.run_begin[o]], j = j0 + o % kPlanTileRows;
            return base + (b * N + j) * width + head_offset;
          };
        };
        auto grad_out_at = [&](int m, int64_t d) {
          return load_acc(grad_out + (static_cast<int64_t>(rows.b[m]) * N + rows.i[m]) * H * Wv + h * Wv + d);
        };
        if (rk.ds > 0)
          add_runs<acc_t>(rows, rk.ds, key_row(buf.shared[kK], H * rk.ds, h * rk.ds),
                          [&](int m, int64_t d) { return s.dscore[m] * s.q[m * W + d]; });
        if (rv.ds > 0)
          add_runs<acc_t>(rows, rv.ds, key_row(buf.shared[kV], H * rv.ds, h * rv.ds),
                          [&](int m, int64_t d) { return s.weight[m] * grad_out_at(m, d); });
        if (rk.dr > 0)
          add_source_grad(
              a, kK, rows, ck, h, j0, [&](int m, int64_t n) { return s.dscore[m] * s.q[m * W + rk.ds + n]; },
              buf.source[kK], s.tile, s.scratch);
        if (rv.dr > 0)
          add_source_grad(
              a, kV, rows, cv, h, j0, [&](int m, int64_t n) { return s.weight[m] * grad_out_at(m, rv.ds + n); },
              buf.source[kV], s.tile, s.scratch);
      }
    }
  }
}

// Block (group, head): the group's table rows, head columns, over all its pairs x batch items.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, 1) attention_backward_table_kernel(
    AttentionArgs<scalar_t> a, const scalar_t* __restrict__ grad_out, BackwardBuffers<at::opmath_type<scalar_t>> buf) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kLdC = TileTraits<scalar_t>::kLdC;
  extern __shared__ __align__(128) unsigned char smem[];
  const int64_t W = a.width(), Wv = a.value_width(), N = a.N, H = a.H, B = a.B, P = a.layout.pairs;
  BackwardSmem<scalar_t> s;
  SmemCarver carver{reinterpret_cast<uintptr_t>(smem)};
  s.carve(carver, W);
  ChunkRows& rows = *s.rows;
  const int64_t g = blockIdx.x, h = blockIdx.y;
  const int32_t* group_begin = a.plan + a.layout.group_begin;
  const int32_t* pair_i = a.plan + a.layout.pair_i;
  const int32_t* pair_j = a.plan + a.layout.pair_j;
  const int64_t first = group_begin[g], total = (group_begin[g + 1] - first) * B;  // rows: (pair, batch item)
  const bool relative[3] = {a.role[kQ].dr > 0, a.role[kK].dr > 0, a.role[kV].dr > 0};
  int32_t cls[3];
  for (int role = 0; role < 3; ++role) cls[role] = a.group_class(role, g);
  for (int64_t c0 = 0; c0 < total; c0 += kBM) {
    __syncthreads();
    for (int m = threadIdx.x; m < kBM; m += kThreads) {
      const bool ok = c0 + m < total;
      const int64_t p = ok ? first + (c0 + m) / B : 0, b = ok ? (c0 + m) % B : 0;
      rows.b[m] = static_cast<int32_t>(b);
      rows.p[m] = static_cast<int32_t>(p);
      rows.i[m] = ok ? pair_i[p] : 0;
      rows.j[m] = ok ? pair_j[p] : 0;
      rows.owner[m] = ok ? 0 : -1;
      const int64_t at = (b * H + h) * P + p;
      s.weight[m] = ok ? buf.weight[at] : acc_t(0);
      s.dscore[m] = ok ? buf.dscore[at] : acc_t(0);
    }
    __syncthreads();
    if (relative[kK]) role_rows(a, kQ, rows, cls[kQ], h, s.q, s.tile, s.scratch);
    if (relative[kQ]) role_rows(a, kK, rows, cls[kK], h, s.k, s.tile, s.scratch);
    for (int role = 0; role < 3; ++role) {
      if (!relative[role]) continue;
      const Role<scalar_t>& r = a.role[role];
      // The role's relative per-pair gradient, column n of the head's dr.
      auto grad = [&](int m, int64_t n) -> acc_t {
        if (!rows.valid(m)) return acc_t(0);
        if (role == kQ) return s.dscore[m] * s.k[m * W + r.ds + n];
        if (role == kK) return s.dscore[m] * s.q[m * W + r.ds + n];
        return s.weight[m] *
               load_acc(grad_out + (static_cast<int64_t>(rows.b[m]) * N + rows.i[m]) * H * Wv + h * Wv + r.ds + n);
      };
      acc_t* table = buf.table[role] + static_cast<int64_t>(cls[role]) * r.C * H * r.dr + h * r.dr;
      for (int64_t k0 = 0; k0 < r.C; k0 += kBM) {
        for (int64_t n0 = 0; n0 < r.dr; n0 += kBN) {
          tile_gemm<scalar_t>(
              kBM,
              [&](int c, int64_t m) -> acc_t {
                if (!rows.valid(static_cast<int>(m)) || k0 + c >= r.C) return acc_t(0);
                const int64_t token = rows.token(role, static_cast<int>(m));
                return load_acc(r.source + (static_cast<int64_t>(rows.b[m]) * N + token) * r.C + k0 + c);
              },
              [&](int64_t m, int n) -> acc_t { return n0 + n < r.dr ? grad(static_cast<int>(m), n0 + n) : acc_t(0); },
              s.tile, s.scratch);
          for (int e = threadIdx.x; e < kBM * kBN; e += kThreads) {
            const int c = e / kBN, n = e % kBN;
            if (k0 + c < r.C && n0 + n < r.dr) table[(k0 + c) * H * r.dr + n0 + n] += s.tile[c * kLdC + n];
          }
          __syncthreads();
        }
      }
    }
  }
}

template <typename scalar_t>
struct CastList {
  const at::opmath_type<scalar_t>* from[9];
  scalar_t* to[9];
  int64_t numel[9];
};

// Block row y casts accumulator y (grid-stride over its elements).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, 1) attention_backward_cast_kernel(CastList<scalar_t> list) {
  const int y = blockIdx.y;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; e < list.numel[y];
       e += static_cast<int64_t>(gridDim.x) * kThreads)
    list.to[y][e] = static_cast<scalar_t>(list.from[y][e]);
}

// grads[t] = acc[t] in the input dtype (one launch), when the two differ.  A template, so that
// the cast kernel exists only for fp16/bf16.
template <typename scalar_t>
void cast_accumulators(const std::array<at::Tensor, 9>& acc, std::array<at::Tensor, 9>& grads, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    CastList<scalar_t> list{};
    int count = 0;
    int64_t largest = 0;
    for (int t = 0; t < 9; ++t) {
      if (!acc[t].defined() || acc[t].numel() == 0) continue;
      list.from[count] = acc[t].data_ptr<acc_t>();
      list.to[count] = grads[t].data_ptr<scalar_t>();
      list.numel[count] = acc[t].numel();
      largest = std::max(largest, acc[t].numel());
      ++count;
    }
    if (count == 0) return;
    const auto blocks = static_cast<unsigned>(std::min<int64_t>((largest + kThreads - 1) / kThreads, 4096));
    launch_kernel<attention_backward_cast_kernel<scalar_t>>(dim3(blocks, count), kThreads, 0, stream)(list);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

int64_t attention_backward_smem_bytes(at::ScalarType dtype, int64_t width, int64_t /*value_width*/) {
  int64_t bytes = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "translution_attention_backward_cuda", [&] {
    bytes = carved_bytes([&](SmemCarver& c) { BackwardSmem<scalar_t>{}.carve(c, width); });
  });
  return bytes;
}

void attention_backward_launch(const AttentionInputs& in, const AttentionPlan& plan, const at::Tensor& grad_out,
                               const at::Tensor& out, const at::Tensor& lse, std::array<at::Tensor, 9>& grads) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "translution_attention_backward_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr bool kCast = !std::is_same_v<scalar_t, acc_t>;  // fp16/bf16: accumulate in fp32, then cast
    const AttentionArgs<scalar_t> args = make_attention_args<scalar_t>(in, plan);
    check_grid_limits(plan);
    const auto acc_opts = out.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    // The accumulators: the gradients themselves when they are in the compute type.
    std::array<at::Tensor, 9> acc;
    for (int t = 0; t < 9; ++t)
      if (grads[t].defined()) acc[t] = kCast ? at::empty(grads[t].sizes(), acc_opts) : grads[t];
    BackwardBuffers<acc_t> buf{};
    for (int r = 0; r < 3; ++r) {
      buf.shared[r] = acc[r].defined() ? acc[r].data_ptr<acc_t>() : nullptr;
      buf.source[r] = acc[3 + r].defined() ? acc[3 + r].data_ptr<acc_t>() : nullptr;
      buf.table[r] = acc[6 + r].defined() ? acc[6 + r].data_ptr<acc_t>() : nullptr;
      buf.table_numel[r] = acc[6 + r].defined() ? acc[6 + r].numel() : 0;
    }
    const int64_t P = plan.groups->layout.pairs;
    at::Tensor pair_buffers = at::empty({2, plan.B, plan.H, P}, acc_opts);
    buf.weight = pair_buffers[0].data_ptr<acc_t>();
    buf.dscore = pair_buffers[1].data_ptr<acc_t>();

    const int64_t bytes = attention_backward_smem_bytes(out.scalar_type(), args.width(), args.value_width());
    const auto stream = at::cuda::getCurrentCUDAStream();
    const dim3 token_grid(static_cast<unsigned>(plan.groups->layout.tiles),
                          static_cast<unsigned>((plan.B + kBatchTile - 1) / kBatchTile));
    const at::Tensor grad_out_c = grad_out.contiguous(), out_c = out.contiguous(), lse_c = lse.contiguous();
    constexpr auto query_kernel = attention_backward_query_kernel<scalar_t>;
    allow_shared_memory(query_kernel, bytes, "attention_backward_query_kernel");
    launch_kernel<query_kernel>(token_grid, kThreads, bytes, stream)(
        args, grad_out_c.data_ptr<scalar_t>(), out_c.data_ptr<scalar_t>(), lse_c.data_ptr<acc_t>(), buf);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    constexpr auto key_kernel = attention_backward_key_kernel<scalar_t>;
    allow_shared_memory(key_kernel, bytes, "attention_backward_key_kernel");
    launch_kernel<key_kernel>(token_grid, kThreads, bytes, stream)(args, grad_out_c.data_ptr<scalar_t>(), buf);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (plan.num_groups() > 0) {
      constexpr auto table_kernel = attention_backward_table_kernel<scalar_t>;
      allow_shared_memory(table_kernel, bytes, "attention_backward_table_kernel");
      launch_kernel<table_kernel>(dim3(static_cast<unsigned>(plan.num_groups()), static_cast<unsigned>(plan.H)),
                                  kThreads, bytes, stream)(args, grad_out_c.data_ptr<scalar_t>(), buf);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    cast_accumulators<scalar_t>(acc, grads, stream);
  });
}

}  // namespace translution_ext::cuda
