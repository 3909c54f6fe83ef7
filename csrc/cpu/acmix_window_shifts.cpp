// Shifted-window products of the CPU ACmix kernel (acmix_window_shifts.h).  The inner loops
// run over kLanes consecutive output pixels with kLanes accumulators, which the compiler
// turns into vector instructions.  On x86-64 each product is also compiled for x86-64-v3 (AVX2, FMA) and
// picked at load time (the baseline x86-64 target has 4-lane SSE2 only); the bodies have
// internal linkage, so each compiled copy stays with its own entry point.
#include "acmix_window_shifts.h"

#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

// GCC on x86-64 Linux (ifunc resolvers); other compilers build the portable copy only.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define TRANSLUTION_EXT_ISA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
#endif
#ifndef TRANSLUTION_EXT_ISA_CLONES
#define TRANSLUTION_EXT_ISA_CLONES
#endif

// The vector types below never cross a call boundary (always inlined), so the ABI note is moot.
#pragma GCC diagnostic ignored "-Wpsabi"
// Multiply-adds as FMA where the target has it (the default C++ mode keeps them apart).
#pragma GCC optimize("fp-contract=fast")

namespace translution_ext {

ShiftLayout shift_layout(int64_t hd, int64_t window, int64_t stride, int64_t Ho, int64_t Wo) {
  const auto round_up = [](int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; };
  const int64_t margin = (window - 1) / stride;
  // A run starting at the last output pixels reads phase columns up to round_up(Wo) + margin.
  const int64_t cols = round_up(round_up(Wo) + margin);
  return {hd, window, stride, Ho, Wo, window * window, margin, (Ho - 1) * stride + window, cols, margin + cols};
}

namespace {

// J independent accumulator runs per inner loop: one run is a chain of dependent adds,
// which would leave the vector units idle most of the time.
constexpr int kRuns = 8;

// kLanes values as one vector (one or two registers); explicit so that the accumulators stay
// in registers.
template <typename T>
struct Lanes {
  typedef T type __attribute__((vector_size(kLanes * sizeof(T))));
};
template <typename T>
using lanes_t = typename Lanes<T>::type;

template <typename T>
inline __attribute__((always_inline)) lanes_t<T> load(const T* p) {
  lanes_t<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline __attribute__((always_inline)) void store(T* p, const lanes_t<T>& v) {
  std::memcpy(p, &v, sizeof v);
}

// out_j[i] = Σ_t a[off_a(t) + i] · b[off_b(t) + j·b_step + i] for j < J: J runs that share a.
template <int J, typename T, typename Offsets>
inline __attribute__((always_inline)) void shared_runs(int64_t n, const Offsets& offsets, const T* a, const T* b,
                                                       int64_t b_step, T* out, int64_t out_step) {
  lanes_t<T> acc[J] = {};
  for (int64_t t = 0; t < n; ++t) {
    const auto [oa, ob] = offsets(t);
    const lanes_t<T> at = load(a + oa);
    const T* bt = b + ob;
#pragma GCC unroll 16
    for (int j = 0; j < J; ++j) acc[j] += at * load(bt + j * b_step);
  }
#pragma GCC unroll 16
  for (int j = 0; j < J; ++j) store(out + j * out_step, acc[j]);
}

// Runs over channels d, d + 1, ..: blocks of kRuns, then one at a time.
template <typename T, typename F>
inline __attribute__((always_inline)) void channel_blocks(int64_t channels, const F& f) {
  int64_t d = 0;
  for (; d + kRuns <= channels; d += kRuns) f.template operator()<kRuns>(d);
  for (; d < channels; ++d) f.template operator()<1>(d);
}

template <typename T>
inline __attribute__((always_inline)) void dot_body(const ShiftLayout& l, const T* x, const T* y, T* out) {
  // For each window row du, kRuns window columns at a time share the run of x; the sum is over d.
  for (int64_t yo = 0; yo < l.Ho; ++yo) {
    for (int64_t du = 0; du < l.ka; ++du) {
      for (int64_t dv0 = 0; dv0 < l.ka; dv0 += kRuns) {
        int64_t off[kRuns];  // window columns past ka repeat dv0 and are not stored
        for (int j = 0; j < kRuns; ++j) {
          const int64_t dv = dv0 + j < l.ka ? dv0 + j : dv0;
          off[j] = ((yo * l.s + du) * l.s + dv % l.s) * l.cols + dv / l.s;
        }
        const int64_t runs = l.ka - dv0 < kRuns ? l.ka - dv0 : kRuns;
        for (int64_t x0 = 0; x0 < l.Wo; x0 += kLanes) {
          lanes_t<T> acc[kRuns] = {};
          const T* xr = x + yo * l.row + l.margin + x0;
          for (int64_t d = 0; d < l.hd; ++d) {
            const lanes_t<T> a = load(xr + d * l.Ho_row());
            const T* b = y + d * l.key_plane() + x0;
#pragma GCC unroll 16
            for (int j = 0; j < kRuns; ++j) acc[j] += a * load(b + off[j]);
          }
          for (int64_t j = 0; j < runs; ++j)
            store(out + (du * l.ka + dv0 + j) * l.Ho_row() + yo * l.row + l.margin + x0, acc[j]);
        }
      }
    }
  }
}

template <typename T>
inline __attribute__((always_inline)) void sum_body(const ShiftLayout& l, const T* w, const T* y, T* out) {
  // kRuns channels at a time share the run of w[u]; the sum is over the window positions u.
  std::vector<int64_t> key_at(l.U);  // where window position u starts on the key side (row 0)
  for (int64_t u = 0; u < l.U; ++u) key_at[u] = (u / l.ka * l.s + u % l.ka % l.s) * l.cols + u % l.ka / l.s;
  for (int64_t yo = 0; yo < l.Ho; ++yo) {
    for (int64_t x0 = 0; x0 < l.Wo; x0 += kLanes) {
      const int64_t w_at = yo * l.row + l.margin + x0, y_at = yo * l.s * l.s * l.cols + x0;
      const auto offsets = [&](int64_t u) __attribute__((always_inline)) {
        return std::pair<int64_t, int64_t>{u * l.Ho_row() + w_at, key_at[u] + y_at};
      };
      channel_blocks<T>(l.hd, [&]<int J>(int64_t d) __attribute__((always_inline)) {
        shared_runs<J>(l.U, offsets, w, y + d * l.key_plane(), l.key_plane(), out + d * l.Ho_row() + w_at,
                       l.Ho_row());
      });
    }
  }
}

template <typename T>
inline __attribute__((always_inline)) void scatter_body(const ShiftLayout& l, const T* w, const T* x, T* out) {
  // Padded row r is window row du of output rows yo = (r - du) / stride; kRuns channels at a
  // time share the run of w[u]; the sum is over the (du, dv) that reach the padded pixel.
  std::vector<std::pair<int64_t, int64_t>> pairs(l.U);  // (w, x) offsets of each contributing (du, dv)
  for (int64_t r = 0; r < l.Hp; ++r) {
    for (int64_t ph = 0; ph < l.s; ++ph) {
      int64_t n = 0;
      for (int64_t du = r % l.s; du < l.ka && du <= r; du += l.s) {
        const int64_t yo = (r - du) / l.s;
        if (yo >= l.Ho) continue;
        for (int64_t dv = ph; dv < l.ka; dv += l.s) {
          const int64_t back = yo * l.row + l.margin - dv / l.s;  // stays inside the row's margins
          pairs[n++] = {(du * l.ka + dv) * l.Ho_row() + back, back};
        }
      }
      for (int64_t c0 = 0; c0 < l.cols; c0 += kLanes) {
        const auto offsets = [&](int64_t t) __attribute__((always_inline)) { return std::pair<int64_t, int64_t>{pairs[t].first + c0, pairs[t].second + c0}; };
        channel_blocks<T>(l.hd, [&]<int J>(int64_t d) __attribute__((always_inline)) {
          shared_runs<J>(n, offsets, w, x + d * l.Ho_row(), l.Ho_row(),
                         out + d * l.key_plane() + (r * l.s + ph) * l.cols + c0, l.key_plane());
        });
      }
    }
  }
}

// exp by range reduction, x = k·ln2 + r with |r| <= ln2/2, and a degree-6 polynomial for e^r
// (Cephes expf); 2^k goes straight into the exponent bits.
inline __attribute__((always_inline)) lanes_t<float> exp_lanes(lanes_t<float> x) {
  typedef int32_t ilanes_t __attribute__((vector_size(kLanes * sizeof(int32_t))));
  const lanes_t<float> zero = {}, top = zero + 88.3762626647949f, bottom = zero - 87.3365447505531f;
  x = x > top ? top : x;
  x = x < bottom ? bottom : x;  // below it e^x is under the smallest normal float
  const lanes_t<float> t = x * 1.44269504088896341f + 0.5f;
  ilanes_t ki = __builtin_convertvector(t, ilanes_t);  // rounds toward zero ...
  ki += __builtin_convertvector(ki, lanes_t<float>) > t ? ilanes_t{} - 1 : ilanes_t{};  // ... so floor
  const lanes_t<float> k = __builtin_convertvector(ki, lanes_t<float>);
  const lanes_t<float> r = x - k * 0.693359375f + k * 2.12194440e-4f;
  lanes_t<float> p = zero + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  ilanes_t bits;
  std::memcpy(&bits, &p, sizeof bits);
  bits += ki << 23;
  std::memcpy(&p, &bits, sizeof p);
  return p;
}

}  // namespace

TRANSLUTION_EXT_ISA_CLONES void exp_runs(float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += kLanes) store(x + i, exp_lanes(load(x + i)));
}

void exp_runs(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

#define TRANSLUTION_EXT_SHIFTS(T)                                                                                 \
  TRANSLUTION_EXT_ISA_CLONES void shift_dot_##T(const ShiftLayout& l, const T* x, const T* y, T* out) {          \
    dot_body(l, x, y, out);                                                                                      \
  }                                                                                                              \
  TRANSLUTION_EXT_ISA_CLONES void shift_sum_##T(const ShiftLayout& l, const T* w, const T* y, T* out) {          \
    sum_body(l, w, y, out);                                                                                      \
  }                                                                                                              \
  TRANSLUTION_EXT_ISA_CLONES void shift_scatter_##T(const ShiftLayout& l, const T* w, const T* x, T* out) {      \
    scatter_body(l, w, x, out);                                                                                  \
  }                                                                                                              \
  template <>                                                                                                    \
  void shift_dot<T>(const ShiftLayout& l, const T* x, const T* y, T* out) {                                      \
    shift_dot_##T(l, x, y, out);                                                                                 \
  }                                                                                                              \
  template <>                                                                                                    \
  void shift_sum<T>(const ShiftLayout& l, const T* w, const T* y, T* out) {                                      \
    shift_sum_##T(l, w, y, out);                                                                                 \
  }                                                                                                              \
  template <>                                                                                                    \
  void shift_scatter<T>(const ShiftLayout& l, const T* w, const T* x, T* out) {                                  \
    shift_scatter_##T(l, w, x, out);                                                                             \
  }
TRANSLUTION_EXT_SHIFTS(float)
TRANSLUTION_EXT_SHIFTS(double)
#undef TRANSLUTION_EXT_SHIFTS

}  // namespace translution_ext
