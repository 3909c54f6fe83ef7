// The machinery shared by the fused Translution attention kernels (forward and backward).
//
// A block works on a *chunk*: up to kBM rows, each one (batch item b, pair p = (i, j)) of one
// pair group, so every row of the chunk uses the same table row per role.  The role vectors of
// the chunk (per head: [shared | source_row @ table[class]]) are computed 64 columns at a
// time by one block GEMM (block_gemm.cuh: tensor cores for fp16/bf16) into a result tile in
// shared memory.  A chunk's rows are sorted by their *owner* (the output row they add to: a
// query row in the forward, a key row in the key-major backward); each owner's rows are one
// contiguous run, and the thread that owns an output element sums its run in order — one
// writer per element, no atomics, the same result under every schedule.
#pragma once

#include <ATen/OpMathType.h>

#include <cmath>
#include <cstdint>

#include "../translution_attention.h"
#include "block_gemm.cuh"

namespace translution_ext::cuda {

// Owners per block: kPlanTileRows rows of a tile x up to kBatchTile batch items.
constexpr int kBatchTile = 4;
constexpr int kOwners = static_cast<int>(kPlanTileRows) * kBatchTile;
static_assert(kOwners <= kBM, "a chunk row per owner must fit one GEMM tile");

// One role (q, k or v): a shared part (B, N, H*ds) and/or a relative part, source (B, N, C)
// projected by table (R, C, H*dr).
template <typename scalar_t>
struct Role {
  const scalar_t* shared;
  const scalar_t* source;
  const scalar_t* table;
  int64_t ds, dr, C;
  __host__ __device__ int64_t width() const { return ds + dr; }
};

template <typename scalar_t>
struct AttentionArgs {
  Role<scalar_t> role[3];
  const int32_t* plan;  // PairGroups::kernel_plan
  KernelPlanLayout layout;
  int64_t B, N, H;
  at::opmath_type<scalar_t> scale;
  __host__ __device__ int64_t width() const { return role[kQ].width(); }       // q and k per head
  __host__ __device__ int64_t value_width() const { return role[kV].width(); }  // v and out per head
  __device__ int32_t group_class(int role_index, int64_t g) const {
    return plan[layout.group_class + role_index * layout.groups + g];
  }
};

// Carves one block's dynamic shared memory into arrays (128-byte aligned).  The host runs the
// same carving from address 0 to learn the size: one description of the layout for both.
struct SmemCarver {
  uintptr_t at;
  template <typename T>
  __host__ __device__ T* take(int64_t count) {
    at = (at + 127) / 128 * 128;
    T* p = reinterpret_cast<T*>(at);
    at += static_cast<uintptr_t>(count) * sizeof(T);
    return p;
  }
};

// The rows of the chunk in progress (shared memory).
struct ChunkRows {
  int32_t b[kBM], i[kBM], j[kBM], p[kBM];
  int32_t owner[kBM];  // -1: an unused row
  int32_t run_begin[kOwners], run_end[kOwners];
  __device__ bool valid(int m) const { return owner[m] >= 0; }
  __device__ int32_t token(int role_index, int m) const { return role_index == kQ ? i[m] : j[m]; }
};

__host__ __device__ __forceinline__ int64_t imin(int64_t x, int64_t y) { return x < y ? x : y; }

template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> load_acc(const scalar_t* p) {
  return static_cast<at::opmath_type<scalar_t>>(*p);
}

template <typename acc_t>
__device__ __forceinline__ acc_t exp_acc(acc_t x) {
  if constexpr (std::is_same_v<acc_t, float>) return expf(x); else return exp(x);
}

template <typename acc_t>
__device__ __forceinline__ acc_t log_acc(acc_t x) {
  if constexpr (std::is_same_v<acc_t, float>) return logf(x); else return log(x);
}

// After the chunk's rows are filled (owner[] set for every m < kBM): each owner's run.
__device__ inline void find_runs(ChunkRows& rows) {
  for (int r = threadIdx.x; r < kOwners; r += kThreads) rows.run_begin[r] = rows.run_end[r] = 0;
  __syncthreads();
  for (int m = threadIdx.x; m < kBM; m += kThreads) {
    const int32_t o = rows.owner[m];
    if (o < 0) continue;
    if (m == 0 || rows.owner[m - 1] != o) rows.run_begin[o] = m;
    if (m == kBM - 1 || rows.owner[m + 1] != o) rows.run_end[o] = m + 1;
  }
  __syncthreads();
}

// Chunk rows for pairs [first, first + count) of an ordering (`order`: key order, or null for
// pair order) x batch items [b0, b0 + nb); owner = batch item * kPlanTileRows + (token - t0),
// the token being i (query pass) or j (key pass).
template <typename scalar_t>
__device__ void tile_chunk(const AttentionArgs<scalar_t>& a, ChunkRows& rows, const int32_t* order, int64_t first,
                           int64_t count, int64_t b0, int64_t nb, int64_t t0, bool by_key) {
  const int32_t* pair_i = a.plan + a.layout.pair_i;
  const int32_t* pair_j = a.plan + a.layout.pair_j;
  for (int m = threadIdx.x; m < kBM; m += kThreads) {
    if (m < count * nb) {
      const int64_t bl = m / count, at = first + m % count;
      const int32_t p = order ? order[at] : static_cast<int32_t>(at);
      rows.b[m] = static_cast<int32_t>(b0 + bl);
      rows.p[m] = p;
      rows.i[m] = pair_i[p];
      rows.j[m] = pair_j[p];
      rows.owner[m] = static_cast<int32_t>(bl * kPlanTileRows + ((by_key ? pair_j[p] : pair_i[p]) - t0));
    } else {
      rows.owner[m] = -1;
    }
  }
  __syncthreads();
  find_runs(rows);
}

// out (kBM x kLdC, shared memory) = A (kBM x K) @ B (K x kBN), with A and B given elementwise
// by load_a(m, k) and load_b(k, n) for k < K.  Called by every thread of the block.
template <typename scalar_t, typename LoadA, typename LoadB>
__device__ void tile_gemm(int64_t K, const LoadA& load_a, const LoadB& load_b,
                          typename TileTraits<scalar_t>::acc_t* out, unsigned char* scratch) {
  using T = TileTraits<scalar_t>;
  using acc_t = typename T::acc_t;
  using operand_t = typename T::operand_t;
  operand_t* As = reinterpret_cast<operand_t*>(scratch);
  operand_t* Bs = As + kBM * T::kLdA;
  BlockAccumulator<scalar_t> acc;
  acc.zero();
  for (int64_t k0 = 0; k0 < K; k0 += kBK) {
    for (int e = threadIdx.x; e < kBM * kBK; e += kThreads) {
      const int m = e / kBK, k = e % kBK;
      As[m * T::kLdA + k] = to_operand<operand_t>(k0 + k < K ? load_a(m, k0 + k) : acc_t(0));
    }
    for (int e = threadIdx.x; e < kBK * kBN; e += kThreads) {
      const int k = e / kBN, n = e % kBN;
      Bs[k * T::kLdB + n] = to_operand<operand_t>(k0 + k < K ? load_b(k0 + k, n) : acc_t(0));
    }
    __syncthreads();
    acc.step(As, Bs);
    __syncthreads();
  }
  acc.store(out);
  __syncthreads();
}

// out[m][n] = column n0 + n of the role vector of chunk row m for head h, in table row `cls`:
// the shared part for columns < ds, source row @ table[cls] after it; 0 for unused rows and
// past the role's width.  Called by every thread of the block.
template <typename scalar_t>
__device__ void role_tile(const AttentionArgs<scalar_t>& a, int role_index, const ChunkRows& rows, int32_t cls,
                          int64_t h, int64_t n0, at::opmath_type<scalar_t>* out, unsigned char* scratch) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kLdC = TileTraits<scalar_t>::kLdC;
  const Role<scalar_t>& r = a.role[role_index];
  const int64_t N = a.N, H = a.H;
  __syncthreads();  // the previous tile's readers are done with `out`
  const bool relative = r.dr > 0 && n0 + kBN > r.ds;  // the same for every thread
  if (relative) {
    const scalar_t* w = r.table + static_cast<int64_t>(cls) * r.C * H * r.dr + h * r.dr;
    tile_gemm<scalar_t>(
        r.C,
        [&](int m, int64_t c) -> acc_t {
          if (!rows.valid(m)) return acc_t(0);
          return load_acc(r.source + (static_cast<int64_t>(rows.b[m]) * N + rows.token(role_index, m)) * r.C + c);
        },
        [&](int64_t c, int n) -> acc_t {
          const int64_t col = n0 + n - r.ds;
          return col >= 0 && col < r.dr ? load_acc(w + c * H * r.dr + col) : acc_t(0);
        },
        out, scratch);
  }
  for (int e = threadIdx.x; e < kBM * kBN; e += kThreads) {
    const int m = e / kBN, n = e % kBN;
    const int64_t col = n0 + n;
    acc_t v = relative ? out[m * kLdC + n] : acc_t(0);
    if (col < r.ds && rows.valid(m))
      v += load_acc(r.shared + (static_cast<int64_t>(rows.b[m]) * N + rows.token(role_index, m)) * H * r.ds + h * r.ds +
                col);
    out[m * kLdC + n] = v;
  }
  __syncthreads();
}

// buffer[m][0:width) (row stride `width`) = the role vectors of the chunk's rows for head h.
template <typename scalar_t>
__device__ void role_rows(const AttentionArgs<scalar_t>& a, int role_index, const ChunkRows& rows, int32_t cls,
                          int64_t h, at::opmath_type<scalar_t>* buffer, at::opmath_type<scalar_t>* tile,
                          unsigned char* scratch) {
  constexpr int kLdC = TileTraits<scalar_t>::kLdC;
  const int64_t width = a.role[role_index].width();
  for (int64_t n0 = 0; n0 < width; n0 += kBN) {
    role_tile(a, role_index, rows, cls, h, n0, tile, scratch);
    for (int e = threadIdx.x; e < kBM * kBN; e += kThreads) {
      const int m = e / kBN, n = e % kBN;
      if (n0 + n < width) buffer[m * width + n0 + n] = tile[m * kLdC + n];
    }
  }
  __syncthreads();
}

// The size of a kernel's dynamic shared memory, from the kernel's own carving function.
template <typename Carve>
int64_t carved_bytes(const Carve& carve) {
  SmemCarver c{0};
  carve(c);
  return static_cast<int64_t>(c.at);
}

}  // namespace translution_ext::cuda
