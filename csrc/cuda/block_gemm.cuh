// One thread block computes a kBM x kBN tile of C = A @ B, one kBK slice of
// the reduction at a time.  The kernels fill the A slice (kBM x kBK, row-major)
// and the B slice (kBK x kBN, row-major) in shared memory with their own
// gathers; this header owns the tile layout and the multiply-accumulate:
// tensor cores (WMMA, fp32 accumulation) for fp16/bf16 on sm_80+, FMA in the
// opmath type (fp32/fp64) otherwise.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <type_traits>

namespace translution_ext::cuda {

constexpr int kBM = 64, kBN = 64, kBK = 32, kThreads = 256;

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
constexpr bool kArchHasBf16Mma = true;
#else
constexpr bool kArchHasBf16Mma = false;
#endif

template <typename scalar_t>
struct MmaOperand {
  using type = void;
};
template <>
struct MmaOperand<c10::Half> {
  using type = __half;
};
template <>
struct MmaOperand<c10::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename scalar_t>
struct TileTraits {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr bool kTensorCores =
      !std::is_void_v<typename MmaOperand<scalar_t>::type> && kArchHasBf16Mma;
  using operand_t = std::conditional_t<kTensorCores, typename MmaOperand<scalar_t>::type, acc_t>;
  // Padded leading dimensions: multiples of 8 (WMMA) that spread shared-memory banks.
  static constexpr int kLdA = kBK + 8;
  static constexpr int kLdB = kBN + 8;
  static constexpr int kLdC = kBN + 4;
  static constexpr int kOperandBytes = sizeof(operand_t) * (kBM * kLdA + kBK * kLdB);
  static constexpr int kResultBytes = sizeof(acc_t) * kBM * kLdC;
  // The C tile reuses the operand buffers once the reduction is done.
  static constexpr int kSmemBytes = kOperandBytes > kResultBytes ? kOperandBytes : kResultBytes;
};

template <typename T, typename V>
__device__ __forceinline__ T to_operand(V v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

// FMA path: thread (ty, tx) = (tid / 16, tid % 16) owns a 4 x 4 patch.
template <typename acc_t, typename operand_t, int kLdA, int kLdB, int kLdC>
struct FmaAccumulator {
  acc_t v[4][4];
  __device__ void zero() {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) v[i][j] = acc_t(0);
  }
  __device__ void step(const operand_t* a, const operand_t* b) {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll(sizeof(acc_t) == 8 ? 4 : 8)  // fewer live doubles: no spills in fp64
    for (int k = 0; k < kBK; ++k) {
      acc_t av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = static_cast<acc_t>(a[(ty * 4 + i) * kLdA + k]);
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = static_cast<acc_t>(b[k * kLdB + tx * 4 + j]);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) v[i][j] += av[i] * bv[j];
    }
  }
  __device__ void store(acc_t* c) const {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) c[(ty * 4 + i) * kLdC + tx * 4 + j] = v[i][j];
  }
};

// Tensor-core path: warp w owns rows (w / 2) * 16 and columns (w % 2) * 32.
template <typename operand_t, int kLdA, int kLdB, int kLdC>
struct WmmaAccumulator {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> f[2];
  __device__ void zero() {
    nvcuda::wmma::fill_fragment(f[0], 0.0f);
    nvcuda::wmma::fill_fragment(f[1], 0.0f);
  }
  __device__ void step(const operand_t* a, const operand_t* b) {
    using namespace nvcuda;
    const int warp = threadIdx.x / 32, wr = warp / 2, wc = warp % 2;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, operand_t, wmma::row_major> fa;
      wmma::load_matrix_sync(fa, a + wr * 16 * kLdA + kk, kLdA);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, operand_t, wmma::row_major> fb;
        wmma::load_matrix_sync(fb, b + kk * kLdB + wc * 32 + h * 16, kLdB);
        wmma::mma_sync(f[h], fa, fb, f[h]);
      }
    }
  }
  __device__ void store(float* c) const {
    const int warp = threadIdx.x / 32, wr = warp / 2, wc = warp % 2;
#pragma unroll
    for (int h = 0; h < 2; ++h)
      nvcuda::wmma::store_matrix_sync(c + wr * 16 * kLdC + wc * 32 + h * 16, f[h], kLdC,
                                      nvcuda::wmma::mem_row_major);
  }
};

template <typename scalar_t>
using BlockAccumulator = std::conditional_t<
    TileTraits<scalar_t>::kTensorCores,
    WmmaAccumulator<typename TileTraits<scalar_t>::operand_t, TileTraits<scalar_t>::kLdA,
                    TileTraits<scalar_t>::kLdB, TileTraits<scalar_t>::kLdC>,
    FmaAccumulator<typename TileTraits<scalar_t>::acc_t, typename TileTraits<scalar_t>::operand_t,
                   TileTraits<scalar_t>::kLdA, TileTraits<scalar_t>::kLdB,
                   TileTraits<scalar_t>::kLdC>>;

// Epilogue: once the reduction is done (and the operand slices are no longer
// read), spills the accumulator to shared memory `smem` (kSmemBytes) and calls
// write(m, n, value) for every element of the kBM x kBN tile.
template <typename scalar_t, typename Write>
__device__ void for_each_result(const BlockAccumulator<scalar_t>& acc, unsigned char* smem,
                                Write write) {
  using T = TileTraits<scalar_t>;
  auto* c = reinterpret_cast<typename T::acc_t*>(smem);
  acc.store(c);
  __syncthreads();
  for (int e = threadIdx.x; e < kBM * kBN; e += kThreads) {
    const int m = e / kBN, n = e % kBN;
    write(m, n, c[m * T::kLdC + n]);
  }
}

}  // namespace translution_ext::cuda
