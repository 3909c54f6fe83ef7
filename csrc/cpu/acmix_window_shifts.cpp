// Shifted-window products of the CPU ACmix kernel (acmix_window_shifts.h).
//
// Each product is register-blocked: a tile of accumulator vectors (V consecutive output pixels
// each) stays in registers for the whole sum, and every loaded vector feeds several FMAs.
//  - shift_dot: a tile is R output rows x (up to 7) window columns.  Key row r is window row
//    du = r - yo·stride of every output row yo of the tile that it reaches, so each shifted run
//    of y loaded for r serves all of those rows; the sum over channels runs inside.
//  - shift_sum: a tile is R output rows x DB channels; the run of w[u] of a row serves DB
//    channels and the shifted run of y[d] serves every row of the tile that key row r reaches.
//  - shift_scatter: a tile is R padded key rows x DB channels; the run of x[d] of an output row
//    serves every key row of the tile that it reaches, and w[u]'s run DB channels.
// Every output value sums its terms in one fixed order (channels; or key rows, then window
// columns; or output rows, then window columns), whatever the tile shape, so the results do
// not depend on the instruction set picked.
//
// Three builds of the products, picked per call (ShiftLayout::isa): AVX-512 (16 floats a
// vector, 8 for shift_dot; 32 registers), AVX2 + FMA (8 floats, 16 registers) and the baseline x86-64 (SSE2)
// or the portable build elsewhere.  The bodies are always inlined into the entry point of
// each build, so each build's copy carries its own instruction set.
#include "acmix_window_shifts.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "x86_builds.h"

// The vector types below never cross a call boundary (always inlined), so the ABI note is moot.
#pragma GCC diagnostic ignored "-Wpsabi"
// Multiply-adds as FMA where the target has it (the default C++ mode keeps them apart).
#pragma GCC optimize("fp-contract=fast")

#define TRANSLUTION_EXT_INLINE inline __attribute__((always_inline))

namespace translution_ext {

namespace {

int best_isa() {
#if TRANSLUTION_EXT_X86_BUILDS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
    return kIsaAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
    return kIsaAvx2;
#endif
  return kIsaBaseline;
}

}  // namespace

int shift_isa() {
  static const int best = best_isa();
  // TRANSLUTION_EXT_CPU_ISA=avx2 or baseline caps the build used (tests run every build).
  const char* cap_env = std::getenv("TRANSLUTION_EXT_CPU_ISA");
  const std::string cap = cap_env ? cap_env : "";
  if (cap == "baseline") return kIsaBaseline;
  if (cap == "avx2") return std::min(best, static_cast<int>(kIsaAvx2));
  TORCH_CHECK_VALUE(cap.empty() || cap == "avx512",
                    "acmix_window_attention: TRANSLUTION_EXT_CPU_ISA must be unset or one of avx512, avx2, "
                    "baseline, got '", cap, "'");
  return best;
}

ShiftLayout shift_layout(int64_t hd, int64_t window, int64_t stride, int64_t Ho, int64_t Wo) {
  const auto round_up = [](int64_t n, int64_t to) { return (n + to - 1) / to * to; };
  const int64_t margin = (window - 1) / stride;
  // A run starting at the last output pixels reads phase columns up to round_up(Wo) + margin;
  // shift_scatter writes the used phase columns (Wo + margin at most) in runs of kLanes, the
  // last one of kLanes / 2 or fewer: a multiple of kLanes / 2 covers both.  (Narrower than
  // a multiple of kLanes: less memory to stream through the cache for small maps.)
  const int64_t cols = round_up(round_up(Wo, kLanes) + margin, kLanes / 2);
  return {hd,   window, stride, Ho, Wo, window * window, margin, (Ho - 1) * stride + window, cols, margin + cols,
          shift_isa()};
}

namespace {

// V values as one vector; explicit so that the accumulators stay in registers.
template <typename T, int V>
struct Vec {
  typedef T type __attribute__((vector_size(V * sizeof(T))));
};

template <typename T, int V>
TRANSLUTION_EXT_INLINE typename Vec<T, V>::type load(const T* p) {
  typename Vec<T, V>::type v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T, int V>
TRANSLUTION_EXT_INLINE void store(T* p, const typename Vec<T, V>::type& v) {
  std::memcpy(p, &v, sizeof v);
}

// Tile sizes of one build: Regs vector registers of Bytes bytes; shift_dot runs on vectors of
// DotBytes (its shifted loads of y mostly straddle cache lines, which costs less on half-width
// vectors: 8-float vectors in the 32 AVX-512 registers measured faster than 16-float ones).
template <int Bytes, int Regs, int DotBytes>
struct Build {
  static constexpr int bytes = Bytes;
  static constexpr int dot_bytes = DotBytes;
  static constexpr int kMaxShifts = 7;  // window columns per shift_dot tile
  // shift_dot: R rows x S shifts accumulators, plus R runs of x and one of y.
  static constexpr int dot_rows(int shifts) {
    const int r = (Regs - 2) / (shifts + 1);
    return r < 1 ? 1 : (r > 4 ? 4 : r);
  }
  // shift_sum, shift_scatter: R x DB accumulators, plus R runs of w and one of y (or x).
  static constexpr int rows = Regs >= 32 ? 4 : 2;
  static constexpr int channels = Regs >= 32 ? 6 : 5;
};

// Runs of V pixels over [0, n), the last one of V / 4 or V / 2 where that covers the rest: f<W>(x0).
template <int V, typename F>
TRANSLUTION_EXT_INLINE void pixel_runs(int64_t n, const F& f) {
  int64_t x0 = 0;
  for (; x0 + V / 2 < n; x0 += V) f.template operator()<V>(x0);
  if (x0 < n) {
    if constexpr (V >= 8)
      if (x0 + V / 4 >= n) return f.template operator()<V / 4>(x0);
    if constexpr (V >= 4)
      f.template operator()<V / 2>(x0);
    else
      f.template operator()<V>(x0);
  }
}

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// ---- shift_dot --------------------------------------------------------------------------

// acc[i][j] = Σ_d x_i[d·xs] · y[d·ys + off[j]] for the R rows of the tile (x_i: runs of
// x; y: key row r), then stored at out_i + j·os.
template <typename T, int V, int R, int S>
TRANSLUTION_EXT_INLINE void dot_tile(int64_t hd, const T* const* xr, int64_t xs, const T* y, int64_t ys,
                                     const int64_t* off, T* const* outr, int64_t os) {
  using vec = typename Vec<T, V>::type;
  vec acc[R][S] = {};
  for (int64_t d = 0; d < hd; ++d) {
    vec xv[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) xv[i] = load<T, V>(xr[i] + d * xs);
    const T* yd = y + d * ys;
#pragma GCC unroll 8
    for (int j = 0; j < S; ++j) {
      const vec yv = load<T, V>(yd + off[j]);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) acc[i][j] += xv[i] * yv;
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < S; ++j) store<T, V>(outr[i] + j * os, acc[i][j]);
}

template <typename T, int V, int R, int S>
TRANSLUTION_EXT_INLINE void dot_shifts(const ShiftLayout& l, int64_t dv0, const T* x, const T* y, T* out) {
  int64_t off[S];
  for (int j = 0; j < S; ++j) off[j] = (dv0 + j) % l.s * l.cols + (dv0 + j) / l.s;
  for (int64_t yo0 = 0; yo0 < l.Ho; yo0 += R) {
    const int64_t nr = std::min<int64_t>(R, l.Ho - yo0);
    for (int64_t r = yo0 * l.s; r <= (yo0 + nr - 1) * l.s + l.ka - 1; ++r) {
      // The tile's rows yo that key row r reaches: 0 <= du = r - yo·s < ka.
      const int64_t lo = std::max<int64_t>(yo0, floor_div(r - l.ka, l.s) + 1), hi = std::min(yo0 + nr - 1, r / l.s);
      if (lo > hi) continue;
      const int n = static_cast<int>(hi - lo + 1);
      pixel_runs<V>(l.Wo, [&]<int W>(int64_t x0) __attribute__((always_inline)) {
        const T* xr[R];
        T* outr[R];
        for (int i = 0; i < n; ++i) {
          const int64_t yo = lo + i, du = r - yo * l.s, at = yo * l.row + l.margin + x0;
          xr[i] = x + at;
          outr[i] = out + (du * l.ka + dv0) * l.Ho_row() + at;
        }
        const T* yr = y + r * l.s * l.cols + x0;
        switch (n) {  // n rows, as many accumulators
#define TRANSLUTION_EXT_CASE(N) \
  case N:                       \
    if constexpr (N <= R) dot_tile<T, W, N, S>(l.hd, xr, l.Ho_row(), yr, l.key_plane(), off, outr, l.Ho_row()); \
    break;
          TRANSLUTION_EXT_CASE(1)
          TRANSLUTION_EXT_CASE(2)
          TRANSLUTION_EXT_CASE(3)
          TRANSLUTION_EXT_CASE(4)
#undef TRANSLUTION_EXT_CASE
        }
      });
    }
  }
}

template <typename T, typename B>
TRANSLUTION_EXT_INLINE void dot_body(const ShiftLayout& l, const T* x, const T* y, T* out) {
  constexpr int V = B::dot_bytes / sizeof(T);
  for (int64_t dv0 = 0; dv0 < l.ka; dv0 += B::kMaxShifts) {
    switch (std::min<int64_t>(l.ka - dv0, B::kMaxShifts)) {
#define TRANSLUTION_EXT_CASE(S) \
  case S:                       \
    dot_shifts<T, V, B::dot_rows(S), S>(l, dv0, x, y, out); \
    break;
      TRANSLUTION_EXT_CASE(1)
      TRANSLUTION_EXT_CASE(2)
      TRANSLUTION_EXT_CASE(3)
      TRANSLUTION_EXT_CASE(4)
      TRANSLUTION_EXT_CASE(5)
      TRANSLUTION_EXT_CASE(6)
      TRANSLUTION_EXT_CASE(7)
#undef TRANSLUTION_EXT_CASE
    }
  }
}

// ---- shift_sum and shift_scatter --------------------------------------------------------

// One source row t of the common tile below, for the tile rows LO..HI that t reaches.
template <typename T, int V, int R, int DB, int LO, int HI, typename Geo>
TRANSLUTION_EXT_INLINE void accumulate_row(typename Vec<T, V>::type (&acc)[R][DB], const Geo& geo, int64_t t,
                                           const T* w, const T* y, int64_t ys) {
  using vec = typename Vec<T, V>::type;
  for (int64_t j = geo.j_lo; j < geo.j_hi; j += geo.j_step) {
    vec wv[HI + 1];
#pragma GCC unroll 8
    for (int i = LO; i <= HI; ++i) wv[i] = load<T, V>(w + geo.w_at(t, i, j));
    const int64_t y_at = geo.y_at(t, j);
#pragma GCC unroll 8
    for (int k = 0; k < DB; ++k) {
      const vec yv = load<T, V>(y + k * ys + y_at);
#pragma GCC unroll 8
      for (int i = LO; i <= HI; ++i) acc[i][k] += wv[i] * yv;
    }
  }
}

// The common tile: acc[i][k] (i < n rows, k < DB channels) = Σ_t Σ_j w_i(t, j)[·] · y_k(t, j)[·]
// over the source rows t in [t_lo, t_hi] and their window columns j; `geo` gives, for a source
// row t, the tile rows it reaches and the offsets of the runs.
template <typename T, int V, int R, int DB, typename Geo>
TRANSLUTION_EXT_INLINE void accumulate_tile(const Geo& geo, int n, const T* w, const T* y, int64_t ys, T* out,
                                            int64_t os) {
  static_assert(R <= 4, "accumulate_tile dispatches on up to 4 rows");
  using vec = typename Vec<T, V>::type;
  vec acc[R][DB] = {};
  for (int64_t t = geo.t_lo; t <= geo.t_hi; ++t) {
    int64_t lo, hi;
    geo.rows(t, lo, hi);  // tile rows lo..hi (within 0..n-1) that source row t reaches
    switch (lo * 4 + hi) {
#define TRANSLUTION_EXT_CASE(LO, HI)                                                   \
  case LO * 4 + HI:                                                                    \
    if constexpr (HI < R) accumulate_row<T, V, R, DB, LO, HI>(acc, geo, t, w, y, ys); \
    break;
      TRANSLUTION_EXT_CASE(0, 0)
      TRANSLUTION_EXT_CASE(0, 1)
      TRANSLUTION_EXT_CASE(0, 2)
      TRANSLUTION_EXT_CASE(0, 3)
      TRANSLUTION_EXT_CASE(1, 1)
      TRANSLUTION_EXT_CASE(1, 2)
      TRANSLUTION_EXT_CASE(1, 3)
      TRANSLUTION_EXT_CASE(2, 2)
      TRANSLUTION_EXT_CASE(2, 3)
      TRANSLUTION_EXT_CASE(3, 3)
#undef TRANSLUTION_EXT_CASE
      default:  // no tile row (lo > hi)
        break;
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
    if (i < n)
#pragma GCC unroll 8
      for (int k = 0; k < DB; ++k) store<T, V>(out + k * os + geo.out_at(i), acc[i][k]);
}

// Channels d0, d0 + DB, ..: full blocks, then one block of the rest.
template <typename T, int V, int R, int DB, typename Geo>
TRANSLUTION_EXT_INLINE void channel_tiles(const ShiftLayout& l, const Geo& geo, int n, const T* w, const T* y,
                                          int64_t ys, T* out, int64_t os) {
  int64_t d = 0;
  for (; d + DB <= l.hd; d += DB) accumulate_tile<T, V, R, DB>(geo, n, w, y + d * ys, ys, out + d * os, os);
  switch (l.hd - d) {
#define TRANSLUTION_EXT_CASE(K)                                                              \
  case K:                                                                                    \
    if constexpr (K < DB) accumulate_tile<T, V, R, K>(geo, n, w, y + d * ys, ys, out + d * os, os); \
    break;
    TRANSLUTION_EXT_CASE(1)
    TRANSLUTION_EXT_CASE(2)
    TRANSLUTION_EXT_CASE(3)
    TRANSLUTION_EXT_CASE(4)
    TRANSLUTION_EXT_CASE(5)
    TRANSLUTION_EXT_CASE(6)
    TRANSLUTION_EXT_CASE(7)
#undef TRANSLUTION_EXT_CASE
    default:
      break;
  }
}

// shift_sum: tile rows are output rows yo0 + i, source rows t the key rows r, j the window
// column dv: w_i = a[(r - yo·s)·ka + dv] at (yo, x0..), y = key row r shifted by dv.
struct SumGeo {
  const ShiftLayout& l;
  int64_t yo0, n, x0, t_lo, t_hi, j_lo = 0, j_hi, j_step = 1;
  SumGeo(const ShiftLayout& l, int64_t yo0, int64_t n, int64_t x0)
      : l(l), yo0(yo0), n(n), x0(x0), t_lo(yo0 * l.s), t_hi((yo0 + n - 1) * l.s + l.ka - 1), j_hi(l.ka) {}
  TRANSLUTION_EXT_INLINE void rows(int64_t r, int64_t& lo, int64_t& hi) const {
    lo = std::max<int64_t>(0, floor_div(r - l.ka, l.s) + 1 - yo0);
    hi = std::min<int64_t>(n - 1, r / l.s - yo0);
  }
  TRANSLUTION_EXT_INLINE int64_t w_at(int64_t r, int i, int64_t dv) const {
    const int64_t yo = yo0 + i;
    return ((r - yo * l.s) * l.ka + dv) * l.Ho_row() + yo * l.row + l.margin + x0;
  }
  TRANSLUTION_EXT_INLINE int64_t y_at(int64_t r, int64_t dv) const {
    return (r * l.s + dv % l.s) * l.cols + dv / l.s + x0;
  }
  TRANSLUTION_EXT_INLINE int64_t out_at(int i) const { return (yo0 + i) * l.row + l.margin + x0; }
};

// shift_scatter: tile rows are the padded key rows r0 + i of phase ph, source rows t the
// output rows yo, j the window columns dv of phase ph: w_i = w[(r - yo·s)·ka + dv] and x at
// (yo, c0 - dv/s ..) (zero outside the output pixels).  A run of W columns from c0 meets the
// output pixels only for c0 - Wo < dv/s < c0 + W: the other window columns add zeros, skipped
// (at the row's ends, up to half the window).
struct ScatterGeo {
  const ShiftLayout& l;
  int64_t r0, n, ph, c0, t_lo, t_hi, j_lo, j_hi, j_step;
  ScatterGeo(const ShiftLayout& l, int64_t r0, int64_t n, int64_t ph, int64_t c0, int64_t W)
      : l(l), r0(r0), n(n), ph(ph), c0(c0), t_lo(std::max<int64_t>(0, floor_div(r0 - l.ka, l.s) + 1)),
        t_hi(std::min<int64_t>(l.Ho - 1, (r0 + n - 1) / l.s)),
        j_lo(ph + l.s * std::max<int64_t>(0, c0 - l.Wo + 1)),
        j_hi(std::min<int64_t>(l.ka, ph + l.s * (c0 + W - 1) + 1)), j_step(l.s) {}
  TRANSLUTION_EXT_INLINE void rows(int64_t yo, int64_t& lo, int64_t& hi) const {
    lo = std::max<int64_t>(0, yo * l.s - r0);
    hi = std::min<int64_t>(n - 1, yo * l.s + l.ka - 1 - r0);
  }
  TRANSLUTION_EXT_INLINE int64_t w_at(int64_t yo, int i, int64_t dv) const {
    return ((r0 + i - yo * l.s) * l.ka + dv) * l.Ho_row() + yo * l.row + l.margin - dv / l.s + c0;
  }
  TRANSLUTION_EXT_INLINE int64_t y_at(int64_t yo, int64_t dv) const {
    return yo * l.row + l.margin - dv / l.s + c0;
  }
  TRANSLUTION_EXT_INLINE int64_t out_at(int i) const { return ((r0 + i) * l.s + ph) * l.cols + c0; }
};

template <typename T, typename B>
TRANSLUTION_EXT_INLINE void sum_body(const ShiftLayout& l, const T* w, const T* y, T* out) {
  constexpr int V = B::bytes / sizeof(T), R = B::rows;
  for (int64_t yo0 = 0; yo0 < l.Ho; yo0 += R) {
    const int64_t n = std::min<int64_t>(R, l.Ho - yo0);
    pixel_runs<V>(l.Wo, [&]<int W>(int64_t x0) __attribute__((always_inline)) {
      channel_tiles<T, W, R, B::channels>(l, SumGeo(l, yo0, n, x0), static_cast<int>(n), w, y, l.key_plane(), out,
                                          l.Ho_row());
    });
  }
}

template <typename T, typename B>
TRANSLUTION_EXT_INLINE void scatter_body(const ShiftLayout& l, const T* w, const T* x, T* out) {
  constexpr int V = B::bytes / sizeof(T), R = B::rows;
  for (int64_t r0 = 0; r0 < l.Hp; r0 += R) {
    const int64_t n = std::min<int64_t>(R, l.Hp - r0);
    for (int64_t ph = 0; ph < l.s; ++ph) {
      // The columns of phase ph that some window reads (the rest of the row is left as it is).
      const int64_t used = ((l.Wo - 1) * l.s + l.ka - ph + l.s - 1) / l.s;
      pixel_runs<V>(used, [&]<int W>(int64_t c0) __attribute__((always_inline)) {
        const ScatterGeo geo(l, r0, n, ph, c0, W);
        if (geo.t_lo > geo.t_hi) {  // rows no window reaches (none for valid layouts)
          for (int64_t d = 0; d < l.hd; ++d)
            for (int64_t i = 0; i < n; ++i) std::fill_n(out + d * l.key_plane() + geo.out_at(i), W, T(0));
          return;
        }
        channel_tiles<T, W, R, B::channels>(l, geo, static_cast<int>(n), w, x, l.Ho_row(), out, l.key_plane());
      });
    }
  }
}

// exp by range reduction, x = k·ln2 + r with |r| <= ln2/2, and a degree-6 polynomial for e^r
// (Cephes expf); 2^k goes straight into the exponent bits.
template <int V>
TRANSLUTION_EXT_INLINE typename Vec<float, V>::type exp_lanes(typename Vec<float, V>::type x) {
  using vec = typename Vec<float, V>::type;
  typedef int32_t ivec __attribute__((vector_size(V * sizeof(int32_t))));
  const vec zero = {}, top = zero + 88.3762626647949f, bottom = zero - 87.3365447505531f;
  x = x > top ? top : x;
  x = x < bottom ? bottom : x;  // below it e^x is under the smallest normal float
  const vec t = x * 1.44269504088896341f + 0.5f;
  ivec ki = __builtin_convertvector(t, ivec);  // rounds toward zero ...
  ki += __builtin_convertvector(ki, vec) > t ? ivec{} - 1 : ivec{};  // ... so floor
  const vec k = __builtin_convertvector(ki, vec);
  const vec r = x - k * 0.693359375f + k * 2.12194440e-4f;
  vec p = zero + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  ivec bits;
  std::memcpy(&bits, &p, sizeof bits);
  bits += ki << 23;
  std::memcpy(&p, &bits, sizeof p);
  return p;
}

template <typename T, int V>
TRANSLUTION_EXT_INLINE typename Vec<T, V>::type exp_vec(typename Vec<T, V>::type x) {
  if constexpr (std::is_same_v<T, float>) {
    return exp_lanes<V>(x);
  } else {
    for (int i = 0; i < V; ++i) x[i] = std::exp(x[i]);
    return x;
  }
}

// The softmax steps, a run of V output pixels at a time (the sums over u in order).
template <typename T, typename B>
TRANSLUTION_EXT_INLINE void softmax_body(const ShiftLayout& l, T* a, double scale_d) {
  constexpr int V = B::bytes / sizeof(T);
  using vec = typename Vec<T, V>::type;
  const T scale = static_cast<T>(scale_d);
  for (int64_t yo = 0; yo < l.Ho; ++yo)
    for (int64_t x0 = 0; x0 < l.Wo; x0 += V) {
      T* base = a + yo * l.row + l.margin + x0;
      vec mx = load<T, V>(base) * scale;
      for (int64_t u = 1; u < l.U; ++u) {
        const vec e = load<T, V>(base + u * l.Ho_row()) * scale;
        mx = e > mx ? e : mx;
      }
      vec total = {};
      for (int64_t u = 0; u < l.U; ++u) {
        const vec e = exp_vec<T, V>(load<T, V>(base + u * l.Ho_row()) * scale - mx);
        total += e;
        store<T, V>(base + u * l.Ho_row(), e);
      }
      const vec inv = T(1) / total;
      for (int64_t u = 0; u < l.U; ++u) store<T, V>(base + u * l.Ho_row(), load<T, V>(base + u * l.Ho_row()) * inv);
    }
}

template <typename T, typename B>
TRANSLUTION_EXT_INLINE void softmax_backward_body(const ShiftLayout& l, const T* a, T* da, double scale_d) {
  constexpr int V = B::bytes / sizeof(T);
  using vec = typename Vec<T, V>::type;
  const T scale = static_cast<T>(scale_d);
  for (int64_t yo = 0; yo < l.Ho; ++yo) {
    for (int64_t x0 = 0; x0 < l.Wo; x0 += V) {
      const int64_t at = yo * l.row + l.margin + x0;
      vec dot = {};
      for (int64_t u = 0; u < l.U; ++u) dot += load<T, V>(a + u * l.Ho_row() + at) * load<T, V>(da + u * l.Ho_row() + at);
      for (int64_t u = 0; u < l.U; ++u) {
        T* d = da + u * l.Ho_row() + at;
        store<T, V>(d, load<T, V>(a + u * l.Ho_row() + at) * (load<T, V>(d) - dot) * scale);
      }
    }
    for (int64_t u = 0; u < l.U; ++u) {  // the margins and the runs' padding lanes
      T* d = da + u * l.Ho_row() + yo * l.row;
      std::fill(d, d + l.margin, T(0));
      std::fill(d + l.margin + l.Wo, d + l.row, T(0));
    }
  }
}

using Avx512 = Build<64, 32, 32>;
using Avx2 = Build<32, 16, 32>;
using Baseline = Build<16, 16, 16>;

}  // namespace

// One entry point per build and product; shift_dot<T> etc. pick one by l.isa.
#define TRANSLUTION_EXT_ENTRIES(ATTR, B, NAME)                                                    \
  template <typename T>                                                                         \
  ATTR void NAME##_softmax(const ShiftLayout& l, T* a, double scale) {                          \
    softmax_body<T, B>(l, a, scale);                                                            \
  }                                                                                             \
  template <typename T>                                                                         \
  ATTR void NAME##_softmax_backward(const ShiftLayout& l, const T* a, T* da, double scale) {    \
    softmax_backward_body<T, B>(l, a, da, scale);                                               \
  }                                                                                             \
  template <typename T>                                                                         \
  ATTR void NAME##_dot(const ShiftLayout& l, const T* x, const T* y, T* out) {                  \
    dot_body<T, B>(l, x, y, out);                                                               \
  }                                                                                             \
  template <typename T>                                                                         \
  ATTR void NAME##_sum(const ShiftLayout& l, const T* w, const T* y, T* out) {                  \
    sum_body<T, B>(l, w, y, out);                                                               \
  }                                                                                             \
  template <typename T>                                                                         \
  ATTR void NAME##_scatter(const ShiftLayout& l, const T* w, const T* x, T* out) {              \
    scatter_body<T, B>(l, w, x, out);                                                           \
  }

namespace {
#if TRANSLUTION_EXT_X86_BUILDS
TRANSLUTION_EXT_ENTRIES(TRANSLUTION_EXT_AVX512, Avx512, avx512)
TRANSLUTION_EXT_ENTRIES(TRANSLUTION_EXT_AVX2, Avx2, avx2)
#endif
TRANSLUTION_EXT_ENTRIES(, Baseline, baseline)
}  // namespace
#undef TRANSLUTION_EXT_ENTRIES

#if TRANSLUTION_EXT_X86_BUILDS
#define TRANSLUTION_EXT_PICK(l, name, ...)                        \
  switch ((l).isa) {                                              \
    case kIsaAvx512:                                              \
      return avx512_##name(__VA_ARGS__);                          \
    case kIsaAvx2:                                                \
      return avx2_##name(__VA_ARGS__);                            \
    default:                                                      \
      return baseline_##name(__VA_ARGS__);                        \
  }
#else
#define TRANSLUTION_EXT_PICK(l, name, ...) return baseline_##name(__VA_ARGS__);
#endif

template <typename T>
void softmax_u(const ShiftLayout& l, T* a, double scale) {
  TRANSLUTION_EXT_PICK(l, softmax, l, a, scale)
}
template <typename T>
void softmax_backward_u(const ShiftLayout& l, const T* a, T* da, double scale) {
  TRANSLUTION_EXT_PICK(l, softmax_backward, l, a, da, scale)
}

template <typename T>
void shift_dot(const ShiftLayout& l, const T* x, const T* y, T* out) {
  TRANSLUTION_EXT_PICK(l, dot, l, x, y, out)
}
template <typename T>
void shift_sum(const ShiftLayout& l, const T* w, const T* y, T* out) {
  TRANSLUTION_EXT_PICK(l, sum, l, w, y, out)
}
template <typename T>
void shift_scatter(const ShiftLayout& l, const T* w, const T* x, T* out) {
  TRANSLUTION_EXT_PICK(l, scatter, l, w, x, out)
}
#undef TRANSLUTION_EXT_PICK

template void softmax_u<float>(const ShiftLayout&, float*, double);
template void softmax_u<double>(const ShiftLayout&, double*, double);
template void softmax_backward_u<float>(const ShiftLayout&, const float*, float*, double);
template void softmax_backward_u<double>(const ShiftLayout&, const double*, double*, double);
template void shift_dot<float>(const ShiftLayout&, const float*, const float*, float*);
template void shift_dot<double>(const ShiftLayout&, const double*, const double*, double*);
template void shift_sum<float>(const ShiftLayout&, const float*, const float*, float*);
template void shift_sum<double>(const ShiftLayout&, const double*, const double*, double*);
template void shift_scatter<float>(const ShiftLayout&, const float*, const float*, float*);
template void shift_scatter<double>(const ShiftLayout&, const double*, const double*, double*);

}  // namespace translution_ext
