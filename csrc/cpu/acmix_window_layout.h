// Conversions between the op's channel-major maps and the layouts of acmix_window_shifts.h,
// and the per-pixel softmax steps on the query side, for the CPU ACmix kernel.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "../acmix_window_attention.h"
#include "acmix_window_shifts.h"

namespace translution_ext {

// Copies that run row by row write their short rows with inline loops (no library call per row).
#define TRANSLUTION_EXT_ROW_COPIES __attribute__((optimize("no-tree-loop-distribute-patterns")))

// Rows of 8 or more values go by 16-byte vectors (one register of every x86-64 build; wider
// GCC vectors would be split and spilled in this baseline-compiled file), the last one
// overlapping its neighbour where the length is not a multiple of the lanes.  op(i) returns
// the new values of dst[i ..]; the last two vectors are both computed before either is
// stored, so op may read dst (an add in place stays correct).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
template <typename T>
struct RowVec {
  static constexpr int64_t lanes = 16 / sizeof(T);  // 4 floats, 2 doubles: rows of 8 or more hold two
  typedef T type __attribute__((vector_size(16)));
};
template <typename T>
inline __attribute__((always_inline)) typename RowVec<T>::type row_load(const T* p) {
  typename RowVec<T>::type v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline __attribute__((always_inline)) void row_store(T* p, const typename RowVec<T>::type& v) {
  std::memcpy(p, &v, sizeof v);
}
template <typename T, typename Op>
inline __attribute__((always_inline)) void row_vectors(int64_t n, T* dst, const Op& op) {  // n >= 2 vectors
  constexpr int64_t V = RowVec<T>::lanes;
  int64_t i = 0;
  for (; i + 2 * V < n; i += V) row_store(dst + i, op(i));
  const auto a = op(i), b = op(n - V);
  row_store(dst + i, a);
  row_store(dst + n - V, b);
}

// Channel-major (channels, Hi, Wi) -> query side (channels, Ho, row): pixel (yo·step, xo·step).
// Writes the output pixels only: dst's margins must be zero (a buffer zeroed once keeps them so).
template <typename scalar_t, typename T>
TRANSLUTION_EXT_ROW_COPIES void to_query_side(const ShiftLayout& l, const scalar_t* src, int64_t channels, int64_t Hi,
                                              int64_t Wi, int64_t step, T* dst) {
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t yo = 0; yo < l.Ho; ++yo) {
      const scalar_t* __restrict__ s = src + (c * Hi + yo * step) * Wi;
      T* __restrict__ d = dst + c * l.Ho_row() + yo * l.row + l.margin;
      if constexpr (std::is_same_v<scalar_t, T>)
        if (step == 1 && l.Wo >= 8) {
          row_vectors(l.Wo, d, [&](int64_t i) { return row_load(s + i); });
          continue;
        }
      if (step == 1)
        for (int64_t xo = 0; xo < l.Wo; ++xo) d[xo] = T(s[xo]);
      else
        for (int64_t xo = 0; xo < l.Wo; ++xo) d[xo] = T(s[xo * step]);
    }
}

// The reverse for the output pixels: dst (channels, Ho, Wo), or every step-th pixel of
// (channels, Hi, Wi) with the pixels between left as they are.
template <typename T, typename out_t>
TRANSLUTION_EXT_ROW_COPIES void from_query_side(const ShiftLayout& l, const T* src, int64_t channels, int64_t Hi, int64_t Wi, int64_t step,
                     out_t* dst) {
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t yo = 0; yo < l.Ho; ++yo) {
      const T* __restrict__ s = src + c * l.Ho_row() + yo * l.row + l.margin;
      out_t* __restrict__ d = dst + (c * Hi + yo * step) * Wi;
      if constexpr (std::is_same_v<out_t, T>)
        if (step == 1 && l.Wo >= 8) {
          row_vectors(l.Wo, d, [&](int64_t i) { return row_load(s + i); });
          continue;
        }
      for (int64_t xo = 0; xo < l.Wo; ++xo) d[xo * step] = static_cast<out_t>(s[xo]);
    }
}

// Where every padded pixel that some window reads lives on the key side, and which pixel
// of the (H, W) map it reflects; computed once per call.  Columns go in runs that advance
// by one on both sides (the interior of a row, for stride 1), copied as such.
struct KeyPlan {
  struct Run {
    int64_t dst, src, n;  // phase-split column offset, source column, length
  };
  std::vector<int64_t> row_src;  // (Hp): source row of padded row r
  std::vector<Run> runs;
  std::vector<int64_t> phase_cols;  // (stride): columns of each phase that some window reads
  std::vector<Run> long_runs;       // the runs of 8 or more columns, copied as runs ...
  std::vector<std::pair<int64_t, int64_t>> singles;  // ... and the other columns one by one: (dst, src)
  std::vector<std::vector<int64_t>> rows_of;  // (H): the padded rows that reflect source row h, in order
  bool run_covers_row;                        // one long run covers every source column
  KeyPlan(const ShiftLayout& l, int64_t H, int64_t W) : rows_of(H) {
    const int64_t half = l.ka / 2, Wp = (l.Wo - 1) * l.s + l.ka;
    for (int64_t ph = 0; ph < l.s; ++ph) phase_cols.push_back((Wp - ph + l.s - 1) / l.s);
    for (int64_t r = 0; r < l.Hp; ++r) row_src.push_back(reflect(r - half, H));
    for (int64_t c = 0; c < Wp; ++c) {
      const int64_t dst = c % l.s * l.cols + c / l.s, src = reflect(c - half, W);
      if (!runs.empty() && runs.back().dst + runs.back().n == dst && runs.back().src + runs.back().n == src)
        ++runs.back().n;
      else
        runs.push_back({dst, src, 1});
    }
    for (const auto& run : runs) {
      if (run.n >= 8)
        long_runs.push_back(run);
      else
        for (int64_t i = 0; i < run.n; ++i) singles.emplace_back(run.dst + i, run.src + i);
    }
    run_covers_row = long_runs.size() == 1 && long_runs[0].src == 0 && long_runs[0].n == W;
    for (int64_t r = 0; r < l.Hp; ++r) rows_of[row_src[r]].push_back(r);
  }
};

// (hd, H, W) minus `sub` when given -> the padded key side (hd, Hp, stride, cols).  Writes the
// columns some window reads only: the others must be zero (a buffer zeroed once keeps them so).
template <typename scalar_t, typename T>
TRANSLUTION_EXT_ROW_COPIES void to_key_side(const ShiftLayout& l, const KeyPlan& plan, const scalar_t* src,
                                            const scalar_t* sub, int64_t H, int64_t W, T* dst) {
  for (int64_t d = 0; d < l.hd; ++d)
    for (int64_t r = 0; r < l.Hp; ++r) {
      const int64_t from = (d * H + plan.row_src[r]) * W;
      const scalar_t* __restrict__ a = src + from;
      const scalar_t* __restrict__ b = sub ? sub + from : nullptr;
      T* __restrict__ to = dst + d * l.key_plane() + r * l.s * l.cols;
      for (const auto& run : plan.long_runs) {
        T* __restrict__ t = to + run.dst;
        const scalar_t *__restrict__ ar = a + run.src, *__restrict__ br = b ? b + run.src : nullptr;
        if constexpr (std::is_same_v<scalar_t, T>) {  // runs are of 8 or more columns
          if (br)
            row_vectors(run.n, t, [&](int64_t i) { return row_load(ar + i) - row_load(br + i); });
          else
            row_vectors(run.n, t, [&](int64_t i) { return row_load(ar + i); });
        } else if (br) {
          for (int64_t i = 0; i < run.n; ++i) t[i] = T(ar[i]) - T(br[i]);
        } else {
          for (int64_t i = 0; i < run.n; ++i) t[i] = T(ar[i]);
        }
      }
      if (b)
        for (const auto& [to_at, from_at] : plan.singles) to[to_at] = T(a[from_at]) - T(b[from_at]);
      else
        for (const auto& [to_at, from_at] : plan.singles) to[to_at] = T(a[from_at]);
    }
}

// The adjoint: dst (hd, H, W) = the padded key side folded back.  Reflected pixels add up in a
// fixed order: the long runs of every padded row that reflects source row h (in the order of
// the padded rows, summed in registers and stored once), then, once the channel's rows are
// done, the single columns of each padded row in order (by then the runs' stores have left
// the store buffer, so their loads do not wait on them).
template <typename T>
TRANSLUTION_EXT_ROW_COPIES void from_key_side(const ShiftLayout& l, const KeyPlan& plan, const T* src, int64_t H,
                                              int64_t W, T* dst) {
  const int64_t pitch = l.s * l.cols;  // one padded row
  for (int64_t d = 0; d < l.hd; ++d) {
    const T* __restrict__ from = src + d * l.key_plane();
    for (int64_t h = 0; h < H; ++h) {
      T* __restrict__ to = dst + (d * H + h) * W;
      const std::vector<int64_t>& rows = plan.rows_of[h];
      const int64_t nr = static_cast<int64_t>(rows.size());
      const bool covers = plan.run_covers_row && nr > 0;  // the first padded row writes every column
      if (!covers)
        for (int64_t x = 0; x < W; ++x) to[x] = T(0);
      for (const auto& run : plan.long_runs) {
        T* __restrict__ t = to + run.src;
        const T* __restrict__ f = from + run.dst;
        row_vectors(run.n, t, [&](int64_t i) {
          auto v = covers ? row_load(f + rows[0] * pitch + i) : row_load<T>(t + i);
          for (int64_t k = covers ? 1 : 0; k < nr; ++k) v += row_load(f + rows[k] * pitch + i);
          return v;
        });
      }
    }
    if (!plan.singles.empty())
      for (int64_t h = 0; h < H; ++h) {
        T* __restrict__ to = dst + (d * H + h) * W;
        for (const int64_t r : plan.rows_of[h]) {
          const T* __restrict__ f = from + r * pitch;
          for (const auto& [from_at, to_at] : plan.singles) to[to_at] += f[from_at];
        }
      }
  }
}

#pragma GCC diagnostic pop
#undef TRANSLUTION_EXT_ROW_COPIES

}  // namespace translution_ext
