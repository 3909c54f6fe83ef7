// The three shifted-window products behind the CPU ACmix kernel, on one (b, head) plane.
//
// Query-side maps (channels, Ho, row) hold output pixel (yo, xo) at [yo][margin + xo] and
// zeros elsewhere.  Key-side maps (hd, Hp, stride, cols) hold the reflection-padded map
// split into stride phases: padded pixel (r, c) at [r][c % stride][c / stride], so that the
// window position (du, dv) of the output pixels xo .. xo + L - 1 is one contiguous run
// [yo·stride + du][dv % stride][xo + dv / stride ..].  Every product then walks whole vector
// runs of pixels with no gathers; the only FLOPs that are not useful ones are those of the
// padding lanes of each row's last run (rows are padded to kLanes pixels).
#pragma once

#include <cstdint>

namespace translution_ext {

constexpr int64_t kLanes = 16;  // output pixels per run (one AVX-512 register of floats): rows are padded to it

// Builds of the products (ShiftLayout::isa): the best the CPU runs, or less where the
// environment variable TRANSLUTION_EXT_CPU_ISA caps it (avx2, baseline: tests run every build).
enum : int { kIsaBaseline = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };
int shift_isa();

struct ShiftLayout {
  int64_t hd, ka, s, Ho, Wo, U;  // head dim, window, stride, output size, window²
  int64_t margin;                // (ka - 1) / stride: the largest shift, in phase columns
  int64_t Hp, cols, row;         // padded rows; key-side phase width; query-side row width
  int isa;                       // the build of the products to run (shift_isa())
  int64_t Ho_row() const { return Ho * row; }
  int64_t key_plane() const { return Hp * s * cols; }  // one channel of a key-side map
};

ShiftLayout shift_layout(int64_t hd, int64_t window, int64_t stride, int64_t Ho, int64_t Wo);

// out[u] = Σ_d x[d] · y[d] shifted by u (logits from q and k − pe; dA from dO and v).
template <typename T>
void shift_dot(const ShiftLayout& l, const T* x, const T* y, T* out);

// out[d] = Σ_u w[u] · y[d] shifted by u (the output from a and v; dq from dlogit and k − pe).
template <typename T>
void shift_sum(const ShiftLayout& l, const T* w, const T* y, T* out);

// out[d] = Σ_u (w[u] · x[d]) shifted back by u onto the padded key map (dk from dlogit and q;
// dv from a and dO).  w and x must be zero outside the output pixels; the key-side columns that
// no window reads are left as they are.
template <typename T>
void shift_scatter(const ShiftLayout& l, const T* w, const T* x, T* out);

// Softmax over u of the logits (U, Ho, row) times scale, in place, at the output pixels (the
// runs' padding lanes get arbitrary values).
template <typename T>
void softmax_u(const ShiftLayout& l, T* a, double scale);

// dA (U, Ho, row) -> dlogit = a·(dA − Σ_u a·dA)·scale in place, zero outside the output
// pixels (shift_scatter reads the margins); a is zero outside them.
template <typename T>
void softmax_backward_u(const ShiftLayout& l, const T* a, T* da, double scale);

}  // namespace translution_ext
