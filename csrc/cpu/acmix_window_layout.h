// Conversions between the op's channel-major maps and the layouts of acmix_window_shifts.h,
// and the per-pixel softmax steps on the query side, for the CPU ACmix kernel.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../acmix_window_attention.h"
#include "acmix_window_shifts.h"

namespace translution_ext {

// Channel-major (channels, Hi, Wi) -> query side (channels, Ho, row): pixel (yo·step, xo·step).
template <typename scalar_t, typename T>
void to_query_side(const ShiftLayout& l, const scalar_t* src, int64_t channels, int64_t Hi, int64_t Wi, int64_t step,
                   T* dst) {
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t yo = 0; yo < l.Ho; ++yo) {
      const scalar_t* s = src + (c * Hi + yo * step) * Wi;
      T* d = dst + c * l.Ho_row() + yo * l.row;
      std::fill(d, d + l.margin, T(0));
      for (int64_t xo = 0; xo < l.Wo; ++xo) d[l.margin + xo] = T(s[xo * step]);
      std::fill(d + l.margin + l.Wo, d + l.row, T(0));
    }
}

// The reverse for the output pixels: dst (channels, Ho, Wo), or every step-th pixel of
// (channels, Hi, Wi) with the pixels between left as they are.
template <typename T, typename out_t>
void from_query_side(const ShiftLayout& l, const T* src, int64_t channels, int64_t Hi, int64_t Wi, int64_t step,
                     out_t* dst) {
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t yo = 0; yo < l.Ho; ++yo) {
      const T* s = src + c * l.Ho_row() + yo * l.row + l.margin;
      out_t* d = dst + (c * Hi + yo * step) * Wi;
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
  KeyPlan(const ShiftLayout& l, int64_t H, int64_t W) {
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
  }
};

// (hd, H, W) minus `sub` when given -> the padded key side (hd, Hp, stride, cols).
template <typename scalar_t, typename T>
void to_key_side(const ShiftLayout& l, const KeyPlan& plan, const scalar_t* src, const scalar_t* sub, int64_t H,
                 int64_t W, T* dst) {
  std::vector<T> row(W);  // one source row in T, then copied run by run
  for (int64_t d = 0; d < l.hd; ++d)
    for (int64_t r = 0; r < l.Hp; ++r) {
      const int64_t from = (d * H + plan.row_src[r]) * W;
      if (sub)
        for (int64_t x = 0; x < W; ++x) row[x] = T(src[from + x]) - T(sub[from + x]);
      else
        for (int64_t x = 0; x < W; ++x) row[x] = T(src[from + x]);
      T* to = dst + d * l.key_plane() + r * l.s * l.cols;
      for (int64_t ph = 0; ph < l.s; ++ph)  // columns no window reads, past each phase's last
        std::fill(to + ph * l.cols + plan.phase_cols[ph], to + (ph + 1) * l.cols, T(0));
      for (const auto& run : plan.runs) std::copy(row.data() + run.src, row.data() + run.src + run.n, to + run.dst);
    }
}

// The adjoint: dst (hd, H, W) = the padded key side folded back (reflected pixels add up).
template <typename T>
void from_key_side(const ShiftLayout& l, const KeyPlan& plan, const T* src, int64_t H, int64_t W, T* dst) {
  std::fill(dst, dst + l.hd * H * W, T(0));
  for (int64_t d = 0; d < l.hd; ++d)
    for (int64_t r = 0; r < l.Hp; ++r) {
      const T* from = src + d * l.key_plane() + r * l.s * l.cols;
      T* to = dst + (d * H + plan.row_src[r]) * W;
      for (const auto& run : plan.runs)
        for (int64_t i = 0; i < run.n; ++i) to[run.src + i] += from[run.dst + i];
    }
}

// Softmax over u of the logits (U, Ho, row) times scale, in place, at the output pixels.
template <typename T>
void softmax_u(const ShiftLayout& l, T* a, double scale) {
  std::vector<T> mx(l.Wo), total(l.Wo);
  for (int64_t yo = 0; yo < l.Ho; ++yo) {
    T* base = a + yo * l.row + l.margin;
    std::fill(mx.begin(), mx.end(), -INFINITY);
    std::fill(total.begin(), total.end(), T(0));
    for (int64_t u = 0; u < l.U; ++u) {
      T* e = base + u * l.Ho_row();
      for (int64_t x = 0; x < l.Wo; ++x) mx[x] = std::max(mx[x], e[x] *= T(scale));
    }
    for (int64_t u = 0; u < l.U; ++u) {
      T* e = base + u * l.Ho_row();
      for (int64_t x = 0; x < l.Wo; ++x) e[x] -= mx[x];
      exp_runs(l, e, (l.Wo + kLanes - 1) / kLanes * kLanes);  // the run's tail is never read
      for (int64_t x = 0; x < l.Wo; ++x) total[x] += e[x];
    }    for (int64_t x = 0; x < l.Wo; ++x) total[x] = T(1) / total[x];
    for (int64_t u = 0; u < l.U; ++u) {
      T* e = base + u * l.Ho_row();
      for (int64_t x = 0; x < l.Wo; ++x) e[x] *= total[x];
    }
  }
}

// dA (U, Ho, row) -> dlogit = a·(dA − Σ_u a·dA)·scale in place, zero outside the output
// pixels (shift_scatter reads the margins).
template <typename T>
void softmax_backward_u(const ShiftLayout& l, const T* a, T* da, double scale) {
  std::vector<T> dot(l.Wo);
  for (int64_t yo = 0; yo < l.Ho; ++yo) {
    const int64_t at = yo * l.row + l.margin;
    std::fill(dot.begin(), dot.end(), T(0));
    for (int64_t u = 0; u < l.U; ++u)
      for (int64_t x = 0; x < l.Wo; ++x) dot[x] += a[u * l.Ho_row() + at + x] * da[u * l.Ho_row() + at + x];
    for (int64_t u = 0; u < l.U; ++u) {
      T* d = da + u * l.Ho_row() + yo * l.row;
      const T* w = a + u * l.Ho_row() + at;
      std::fill(d, d + l.margin, T(0));
      for (int64_t x = 0; x < l.Wo; ++x) d[l.margin + x] = w[x] * (d[l.margin + x] - dot[x]) * T(scale);
      std::fill(d + l.margin + l.Wo, d + l.row, T(0));
    }
  }
}

}  // namespace translution_ext
