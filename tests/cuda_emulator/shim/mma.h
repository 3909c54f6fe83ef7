// Emulation build: WMMA fragments as whole tiles.  Every lane holds the full A and B tiles;
// accumulator element e belongs to lane e % 32, which alone computes it (fp32 accumulation over
// k in increasing order) and stores it, so a kernel that reads a stored tile before a barrier
// sees the poisoned shared memory of the lanes that have not run yet.  Loads and stores check
// the hardware's rules (256-bit aligned pointers, ldm a multiple of 16 bytes).
#pragma once
#include <type_traits>

#include "cuda_emulator.h"

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int kRows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int kCols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = kRows * kCols;
  T x[num_elements];  // logical row-major order
};

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const T& v) {
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = v;
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>, "an accumulator load needs a layout_t");
  cuda_emulator::check_wmma_pointer(p, ldm, sizeof(T), "load_matrix_sync");
  constexpr bool row = std::is_same_v<Layout, row_major>;
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::kRows; ++r)
    for (int c = 0; c < F::kCols; ++c) f.x[r * F::kCols + c] = row ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K, typename T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t layout) {
  cuda_emulator::check_wmma_pointer(p, ldm, sizeof(T), "load_matrix_sync");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.x[r * N + c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K, typename T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  cuda_emulator::check_wmma_pointer(p, ldm, sizeof(T), "store_matrix_sync");
  for (int e = static_cast<int>(cuda_emulator::lane_id()); e < M * N; e += 32) {
    const int r = e / N, c = e % N;
    (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[e];
  }
}

template <int M, int N, int K, typename Ta, typename La, typename Tb, typename Lb, typename Tc>
inline void mma_sync(fragment<accumulator, M, N, K, Tc>& d, const fragment<matrix_a, M, N, K, Ta, La>& a,
                     const fragment<matrix_b, M, N, K, Tb, Lb>& b, const fragment<accumulator, M, N, K, Tc>& c) {
  for (int e = static_cast<int>(cuda_emulator::lane_id()); e < M * N; e += 32) {
    const int i = e / N, j = e % N;
    Tc acc = c.x[e];
    for (int k = 0; k < K; ++k) acc += static_cast<Tc>(a.x[i * K + k]) * static_cast<Tc>(b.x[k * N + j]);
    d.x[e] = acc;
  }
}

}  // namespace nvcuda::wmma
