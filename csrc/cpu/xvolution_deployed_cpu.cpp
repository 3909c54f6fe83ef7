// The deployed X-volution on CPU.  The X part is the K x K conv of W*[:, :C] through ATen (oneDNN),
// channels-last with Ka > 1.
// The T(X) part reads the centre Ka x Ka taps of W*[:, C:] only (the taps the fold left zero are
// skipped) and never builds T(X) of the batch or the concatenation:
//   Ka = 1 (float and half types): per work item of about 512 output columns (a block of rows of one
//           image, or a group of whole small images) on one thread, the products
//           X[c, q] * X[c, q + d_s] of a chunk of channels fill a cache-sized buffer, and oneDNN's
//           batch-reduce GEMM kernel (single-threaded; ATen's BLAS inside at::parallel_for would start
//           nested threads) adds W_T[:, chunk] @ buffer into the item's outputs;
//   Ka > 1: slab by slab of images, their products fill an NHWC buffer (16 MB or the size of X) run
//           through oneDNN's channels-last convolution (at C = 64 a third faster than its NCHW one).
//           Where the shifts come in opposite pairs (d, -d) (the default 8 neighbours), one product
//           map per pair serves both with a larger kernel
//           (3 x 4, 4 x 3 or 4 x 4 for Ka = 3: 56 taps per C instead of 72; see ProductMaps);
//           otherwise, with Ka = K, the buffer holds [X, T(X)] and W* runs as one convolution.
// fp64 (no oneDNN kernels) keeps NCHW slabs.  Half types compute in float and round once.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "../parallel.h"
#include "../xvolution_deployed.h"

namespace translution_ext {

namespace {

constexpr int64_t kBufferElements = int64_t(1) << 17;  // products buffer per thread: 512 KB, half of L2
constexpr int64_t kMinPixels = 512;                    // GEMM columns of a work item
constexpr int64_t kSlabElements = int64_t(1) << 22;    // T(X) slab: 16 MB of fp32 or the size of X
constexpr const char* kOp = "xvolution_deployed: ";

// t[i, s*C + c] = X[b0 + i, c] * S_{d_s}(X[b0 + i, c]) for the images [b0, b1): T(X) of a slab of images;
// image i starts image_stride elements after image i - 1.
// Per row, the columns whose neighbour is inside the image run a branch-free inner loop.
template <typename T>
void fill_products(const T* x, const XvolutionDeployedGeometry& g, int64_t b0, int64_t b1, T* t,
                   int64_t image_stride) {
  const int64_t plane_size = g.H * g.W;
  parallel_for_items(0, (b1 - b0) * g.S * g.C, plane_size, [&](int64_t first, int64_t last) {
    for (int64_t item = first; item < last; ++item) {
      const int64_t c = item % g.C, s = (item / g.C) % g.S, b = b0 + item / (g.C * g.S);
      const int64_t dy = g.shifts[2 * s], dx = g.shifts[2 * s + 1];
      const T* plane = x + (b * g.C + c) * plane_size;
      T* o = t + (item / (g.S * g.C)) * image_stride + (item % (g.S * g.C)) * plane_size;
      const int64_t lo = std::clamp<int64_t>(-dx, 0, g.W), hi = std::clamp<int64_t>(g.W - dx, lo, g.W);
      for (int64_t y = 0; y < g.H; ++y, o += g.W) {
        if (y + dy < 0 || y + dy >= g.H) {
          std::fill(o, o + g.W, T(0));
          continue;
        }
        const T* p = plane + y * g.W;
        const T* q = plane + (y + dy) * g.W;
        std::fill(o, o + lo, T(0));
        for (int64_t ix = lo; ix < hi; ++ix) o[ix] = p[ix] * q[ix + dx];
        std::fill(o + hi, o + g.W, T(0));
      }
    }
  });
}

// The first output column ox >= 0 whose input column ox * stride + off is >= bound.
int64_t first_col(int64_t bound, int64_t off, int64_t stride) {
  const int64_t n = bound - off;
  return n <= 0 ? 0 : (n + stride - 1) / stride;
}

// buffer[(r - r0) * ld + (oy - oy0) * Wo + ox] for the GEMM rows r in [r0, r1) of image b: T(X)[b, s*C + c]
// at the input position of tap (ky, kx) of output (oy, ox), 0 outside the image; r = ((s*C + c)*Ka + ky)*Ka + kx.
void fill_tap_products(const float* x, const XvolutionDeployedGeometry& g, int64_t b, int64_t oy0, int64_t oy1,
                       int64_t r0, int64_t r1, float* buffer, int64_t ld) {
  const int64_t a = g.Ka / 2, st = g.stride, taps = g.Ka * g.Ka;
  if (taps == 1 && st == 1) {
    // Output (oy, ox) is input (oy, ox): the rows whose neighbour row is inside run as one long loop
    // (rows of at most a few dozen columns would each pay a loop's start-up), then the columns whose
    // neighbour wrapped into the next or previous row are zeroed.
    const int64_t base = oy0 * g.W, n = (oy1 - oy0) * g.W;  // o[q - base] is output q = y * W + x
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = r % g.C, s = r / g.C, dy = g.shifts[2 * s], dx = g.shifts[2 * s + 1];
      const int64_t lo = std::clamp<int64_t>(-dx, 0, g.W), hi = std::clamp<int64_t>(g.W - dx, lo, g.W);
      const int64_t ya = std::clamp<int64_t>(-dy, oy0, oy1), yb = std::clamp<int64_t>(g.H - dy, ya, oy1);
      const float* plane = x + (b * g.C + c) * g.H * g.W;
      float* o = buffer + (r - r0) * ld;
      if (lo == hi || ya == yb) {
        std::fill(o, o + n, 0.f);
        continue;
      }
      const int64_t first = ya * g.W + lo, last = (yb - 1) * g.W + hi, shift = dy * g.W + dx;
      std::fill(o, o + first - base, 0.f);
      for (int64_t q = first; q < last; ++q) o[q - base] = plane[q] * plane[q + shift];
      for (int64_t y = ya; y + 1 < yb; ++y) {
        std::fill(o + y * g.W + hi - base, o + (y + 1) * g.W - base, 0.f);
        std::fill(o + (y + 1) * g.W - base, o + (y + 1) * g.W + lo - base, 0.f);
      }
      std::fill(o + last - base, o + n, 0.f);
    }
    return;
  }
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t kx = r % g.Ka, ky = (r / g.Ka) % g.Ka, c = (r / taps) % g.C, s = r / (taps * g.C);
    const int64_t dy = g.shifts[2 * s], dx = g.shifts[2 * s + 1], off = kx - a;
    const float* plane = x + (b * g.C + c) * g.H * g.W;
    // Columns where both X[iy, ix] and X[iy + dy, ix + dx] are inside: a branch-free inner loop.
    const int64_t lo = std::min(g.Wo, first_col(std::max<int64_t>(0, -dx), off, st));
    const int64_t hi = std::max(lo, std::min(g.Wo, first_col(std::min(g.W, g.W - dx), off, st)));
    float* o = buffer + (r - r0) * ld;
    for (int64_t oy = oy0; oy < oy1; ++oy, o += g.Wo) {
      const int64_t iy = oy * st + ky - a;
      if (iy < 0 || iy >= g.H || iy + dy < 0 || iy + dy >= g.H) {
        std::fill(o, o + g.Wo, 0.f);
        continue;
      }
      const float* p = plane + iy * g.W;
      const float* q = plane + (iy + dy) * g.W;
      std::fill(o, o + lo, 0.f);
      if (st == 1) {
        for (int64_t ox = lo; ox < hi; ++ox) o[ox] = p[ox + off] * q[ox + off + dx];
      } else {
        for (int64_t ox = lo; ox < hi; ++ox) o[ox] = p[ox * st + off] * q[ox * st + off + dx];
      }
      std::fill(o + hi, o + g.Wo, 0.f);
    }
  }
}

// t[b - b0, y, x, :] for the images [b0, b1) of NHWC x: [X, T(X)] (with_x) or T(X) at pixel (y, x),
// T(X)[s*C + c] = X[c] at (y, x) times X[c] at (y + dy_s, x + dx_s), 0 where that is outside the image.  NHWC puts the
// C products of a pixel and shift next to each other: one contiguous, vectorised loop each.
template <typename T>
void fill_products_nhwc(const T* x, const XvolutionDeployedGeometry& g, int64_t b0, int64_t b1, bool with_x, T* t) {
  const int64_t C = g.C, channels = (with_x ? C : 0) + g.S * C;
  parallel_for_items(b0 * g.H, b1 * g.H, g.W * channels, [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      const int64_t b = row / g.H, y = row % g.H;
      const T* image = x + b * g.H * g.W * C;
      T* o = t + ((row - b0 * g.H) * g.W) * channels;
      for (int64_t ix = 0; ix < g.W; ++ix, o += channels) {
        const T* __restrict__ p = image + (y * g.W + ix) * C;
        T* __restrict__ out = o;
        if (with_x) {
          std::copy(p, p + C, out);
          out += C;
        }
        for (int64_t s = 0; s < g.S; ++s, out += C) {
          const int64_t ny = y + g.shifts[2 * s], nx = ix + g.shifts[2 * s + 1];
          if (ny < 0 || ny >= g.H || nx < 0 || nx >= g.W) {
            std::fill(out, out + C, T(0));
            continue;
          }
          const T* __restrict__ q = image + (ny * g.W + nx) * C;
          for (int64_t c = 0; c < C; ++c) out[c] = p[c] * q[c];
        }
      }
    }
  });
}

// The T(X) part with Ka > 1 on fewer taps.  T_{-d}(q) = X(q) X(q - d) = T_d(q - d): a shift whose opposite is also
// in the set reads the other's product map, moved by d.  Each pair then needs one map P_j (half the products)
// convolved with the union of both Ka x Ka kernels, one of them moved by d: for |d| = 1 a 3x4, 4x3 or 4x4
// footprint instead of 2 x 3x3 (56 taps per channel for the 8 neighbours instead of 72).  Maps with the same
// footprint size run as one convolution (a group), each stored moved so that its footprint starts at the
// kernel's corner; used where the footprints' taps beat S*Ka².
struct ProductMaps {
  int64_t J = 0;
  std::vector<int64_t> d, lo, box;     // per map: its shift (dy, dx), its footprint's corner and size
  std::vector<int64_t> map_of, move;   // per shift: its map, and e_s (T_s(q) = P_j(q + e_s))
  std::vector<std::vector<int64_t>> groups;  // maps convolved together: one footprint size, <= kMaxMapChannels
  int64_t taps() const {
    int64_t n = 0;
    for (int64_t j = 0; j < J; ++j) n += box[2 * j] * box[2 * j + 1];
    return n;
  }
};

// At most this many channels per convolution of maps: with 1024 (C = 256, 14 x 14) oneDNN's channels-last
// convolution of the maps ran 30-50% slower per tap than with 512 or fewer, more than the taps saved.
constexpr int64_t kMaxMapChannels = 512;

ProductMaps pair_shifts(const XvolutionDeployedGeometry& g) {
  ProductMaps m;
  const int64_t a = g.Ka / 2;
  for (int64_t s = 0; s < g.S; ++s) {
    const int64_t dy = g.shifts[2 * s], dx = g.shifts[2 * s + 1];
    int64_t j = 0;
    while (j < m.J && !(m.d[2 * j] == -dy && m.d[2 * j + 1] == -dx && (dy != 0 || dx != 0))) ++j;
    if (j < m.J) {
      m.map_of.push_back(j);
      m.move.insert(m.move.end(), {dy, dx});
      continue;
    }
    m.d.insert(m.d.end(), {dy, dx});
    m.lo.insert(m.lo.end(), {-a, -a});
    m.map_of.push_back(m.J++);
    m.move.insert(m.move.end(), {0, 0});
  }
  std::vector<int64_t> hi(2 * m.J, a);
  for (int64_t s = 0; s < g.S; ++s)
    for (int64_t k = 0; k < 2; ++k) {
      const int64_t j = m.map_of[s], e = m.move[2 * s + k];
      m.lo[2 * j + k] = std::min(m.lo[2 * j + k], e - a);
      hi[2 * j + k] = std::max(hi[2 * j + k], e + a);
    }
  const int64_t per_conv = std::max<int64_t>(1, kMaxMapChannels / std::max<int64_t>(1, g.C));
  for (int64_t j = 0; j < m.J; ++j) {
    m.box.insert(m.box.end(), {hi[2 * j] - m.lo[2 * j] + 1, hi[2 * j + 1] - m.lo[2 * j + 1] + 1});
    auto group = std::find_if(m.groups.begin(), m.groups.end(), [&](const std::vector<int64_t>& maps) {
      return m.box[2 * maps[0]] == m.box[2 * j] && m.box[2 * maps[0] + 1] == m.box[2 * j + 1] &&
             static_cast<int64_t>(maps.size()) < per_conv;
    });
    if (group == m.groups.end())
      m.groups.push_back({j});
    else
      group->push_back(j);
  }
  return m;
}

// A group's kernel (Co, maps*C, By, Bx): W_T's Ka x Ka kernel of each of its shifts added where the footprint
// of the shift's map puts it.
at::Tensor paired_weight(const at::Tensor& w_t, const XvolutionDeployedGeometry& g, const ProductMaps& m,
                         const std::vector<int64_t>& maps) {
  const int64_t n = static_cast<int64_t>(maps.size()), By = m.box[2 * maps[0]], Bx = m.box[2 * maps[0] + 1];
  at::Tensor k = at::zeros({g.Co, n * g.C, By, Bx}, w_t.options());
  const int64_t a = g.Ka / 2;
  for (int64_t s = 0; s < g.S; ++s) {
    const int64_t j = m.map_of[s], pos = std::find(maps.begin(), maps.end(), j) - maps.begin();
    if (pos == n) continue;
    const int64_t oy = m.move[2 * s] - a - m.lo[2 * j], ox = m.move[2 * s + 1] - a - m.lo[2 * j + 1];
    k.narrow(1, pos * g.C, g.C).narrow(2, oy, g.Ka).narrow(3, ox, g.Ka).add_(w_t.narrow(1, s * g.C, g.C));
  }
  return k;
}

// z[b - b0, i, k, n*C + c] = P_j(q) = X[c](q) X[c](q + d_j) at q = (i, k) + lo_j, j = maps[n] (0 where q or
// q + d_j is outside) for the images [b0, b1) of NHWC x; z is (b1 - b0, Hz, Wz, maps*C), padded for a conv
// without padding.
void fill_maps_nhwc(const float* x, const XvolutionDeployedGeometry& g, const ProductMaps& m,
                    const std::vector<int64_t>& maps, int64_t Hz, int64_t Wz, int64_t b0, int64_t b1, float* z) {
  const int64_t C = g.C, channels = static_cast<int64_t>(maps.size()) * C;
  const auto inside = [&](int64_t y, int64_t x) { return y >= 0 && y < g.H && x >= 0 && x < g.W; };
  parallel_for_items(b0 * Hz, b1 * Hz, Wz * channels, [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      const int64_t b = row / Hz, i = row % Hz;
      const float* image = x + b * g.H * g.W * C;
      float* o = z + (row - b0 * Hz) * Wz * channels;
      for (int64_t k = 0; k < Wz; ++k) {
        for (const int64_t j : maps) {
          const int64_t qy = i + m.lo[2 * j], qx = k + m.lo[2 * j + 1];
          const int64_t ny = qy + m.d[2 * j], nx = qx + m.d[2 * j + 1];
          float* __restrict__ out = o;
          o += C;
          if (!inside(qy, qx) || !inside(ny, nx)) {
            std::fill(out, out + C, 0.f);
            continue;
          }
          const float* __restrict__ p = image + (qy * g.W + qx) * C;
          const float* __restrict__ q = image + (ny * g.W + nx) * C;
          for (int64_t c = 0; c < C; ++c) out[c] = p[c] * q[c];
        }
      }
    }
  });
}

// float: per work item on one thread, the products of a chunk of GEMM rows fill a cache-sized buffer and
// oneDNN's batch-reduce GEMM kernel (single-threaded by design) adds W_T[:, chunk] @ buffer into the item's
// outputs.  An item is a block of output rows of one image or, when an image has fewer than kMinPixels
// outputs, a group of whole images: W_T (Co x R, megabytes) then streams from L3 once per kMinPixels
// columns, not once per small image, and each chunk of it stays in L2 across the group's images.
void add_pssa_part_fused(const at::Tensor& x, const at::Tensor& w_t, const XvolutionDeployedGeometry& g,
                         at::Tensor& y) {
  const int64_t R = g.reduction(), HWo = g.Ho * g.Wo, threads = at::get_num_threads();
  int64_t images = 1, rows = g.Ho;
  if (HWo >= kMinPixels) {
    const int64_t parts = (HWo + kMinPixels - 1) / kMinPixels;  // equal blocks of about kMinPixels
    rows = (g.Ho + parts - 1) / parts;
  } else {
    // Groups of about kMinPixels outputs; their count a multiple of the threads (or B) so that none idles.
    int64_t groups = (g.B * HWo + kMinPixels - 1) / kMinPixels;
    groups = std::min(g.B, (groups + threads - 1) / threads * threads);
    images = (g.B + groups - 1) / groups;
  }
  const int64_t blocks = (g.Ho + rows - 1) / rows, items = images > 1 ? (g.B + images - 1) / images : g.B * blocks;
  const int64_t width = images * rows * g.Wo;  // most columns of an item
  const int64_t chunk = std::min(R, std::max<int64_t>(16, kBufferElements / width));
  const float* xp = x.const_data_ptr<float>();
  const float* wp = w_t.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  // Items are taken from a shared counter, not split in advance: a thread that the OS delays (the cores are
  // often shared) leaves its items to the others instead of holding up the whole call.
  std::atomic<int64_t> next{0};
  const int64_t slots = std::min(items, threads);
  parallel_for_items(0, slots, (items + slots - 1) / slots * width * R * g.Co, [&](int64_t, int64_t) {
    std::vector<float> buffer(chunk * width);
    for (int64_t item = next++; item < items; item = next++) {
      const int64_t b0 = images > 1 ? item * images : item / blocks;
      const int64_t b1 = images > 1 ? std::min(g.B, b0 + images) : b0 + 1;
      const int64_t oy0 = images > 1 ? 0 : (item % blocks) * rows, oy1 = std::min(g.Ho, oy0 + rows);
      const int64_t n = (oy1 - oy0) * g.Wo, ld = (b1 - b0) * n;  // columns per image, per buffer row
      for (int64_t r0 = 0; r0 < R; r0 += chunk) {
        const int64_t r1 = std::min(R, r0 + chunk);
        for (int64_t b = b0; b < b1; ++b)
          fill_tap_products(xp, g, b, oy0, oy1, r0, r1, buffer.data() + (b - b0) * n, ld);
        // y[b, :, oy0:oy1, :] (Co, n), row stride Ho*Wo, += W_T[:, r0:r1] (Co, r1 - r0) @ buffer's columns of b
        for (int64_t b = b0; b < b1; ++b)
          at::native::cpublas::brgemm(g.Co, n, r1 - r0, R, ld, HWo, true, wp + r0, buffer.data() + (b - b0) * n,
                                      yp + b * g.Co * HWo + oy0 * g.Wo, false);
      }
    }
    at::native::cpublas::brgemm_release(false);
  });
}

// Images per slab: its buffer together at most the size of X or kSlabElements (one image at least).
int64_t slab_images(const XvolutionDeployedGeometry& g, int64_t image, int64_t x_numel) {
  const int64_t budget = std::max(x_numel, kSlabElements);
  return std::min(g.B, std::max<int64_t>(1, budget / std::max<int64_t>(1, image)));
}

// fp64 (no oneDNN or batch-reduce kernels): NCHW slabs of [X, T(X)] (Ka = K) or T(X) through ATen's conv.
at::Tensor xvolution_deployed_nchw(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                   const XvolutionDeployedGeometry& g) {
  const bool one_conv = g.Ka == g.K;
  at::Tensor y = one_conv ? at::empty({g.B, g.Co, g.Ho, g.Wo}, x.options())
                          : xvolution_deployed_conv_part(x, weight, bias, g);
  if (y.numel() == 0) return y;
  const at::Tensor w_t = xvolution_deployed_pssa_weight(weight, g);
  const int64_t in_channels = one_conv ? g.C * (1 + g.S) : g.S * g.C, image = in_channels * g.H * g.W;
  const int64_t slab = slab_images(g, image, x.numel());
  at::Tensor buffer = at::empty({slab, in_channels, g.H, g.W}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "xvolution_deployed", [&] {
    for (int64_t b0 = 0; b0 < g.B; b0 += slab) {
      const int64_t b1 = std::min(g.B, b0 + slab);
      at::Tensor t = buffer.narrow(0, 0, b1 - b0);
      if (one_conv) {
        t.narrow(1, 0, g.C).copy_(x.narrow(0, b0, b1 - b0));
        fill_products(x.const_data_ptr<scalar_t>(), g, b0, b1, t.mutable_data_ptr<scalar_t>() + g.C * g.H * g.W, image);
        y.narrow(0, b0, b1 - b0).copy_(at::conv2d(t, weight, bias, {g.stride, g.stride}, {g.K / 2, g.K / 2}));
      } else {
        fill_products(x.const_data_ptr<scalar_t>(), g, b0, b1, t.mutable_data_ptr<scalar_t>(), image);
        y.narrow(0, b0, b1 - b0).add_(at::conv2d(t, w_t, {}, {g.stride, g.stride}, {g.Ka / 2, g.Ka / 2}));
      }
    }
  });
  return y;
}

at::Tensor xvolution_deployed_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                                  const std::optional<at::Tensor>& bias_in, at::IntArrayRef shifts,
                                  int64_t stride, int64_t pssa_kernel_size) {
  const auto g = check_xvolution_deployed(x_in, weight_in, bias_in, shifts, stride, pssa_kernel_size, kOp);
  const auto compute = at::toOpMathType(x_in.scalar_type());
  const at::Tensor weight = weight_in.to(compute);
  const std::optional<at::Tensor> bias =
      bias_in.has_value() ? std::optional<at::Tensor>(bias_in->to(compute)) : std::nullopt;
  // fp64 has no oneDNN kernels; empty tensors go the plain way too.
  if (compute != at::kFloat || x_in.numel() == 0 || g.Co == 0)
    return xvolution_deployed_nchw(x_in.to(compute).contiguous(), weight, bias, g).to(x_in.scalar_type());
  if (g.Ka == 1) {
    // Ka = 1: the T(X) part is a GEMM over channels, fused with the products (no T(X) slab at all).  NCHW: a
    // channels-last X part (a faster conv at 64 channels) measured slower overall, its output needing a
    // transpose into the NCHW result (C = 64, 56 x 56, one core: 38.9 vs 36.3 ms).
    const at::Tensor x = x_in.to(compute).contiguous();
    at::Tensor y = xvolution_deployed_conv_part(x, weight, bias, g);
    add_pssa_part_fused(x, xvolution_deployed_pssa_weight(weight, g), g, y);
    return y.to(x_in.scalar_type());
  }
  const at::Tensor x_cl = x_in.to(compute).contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t pad = g.K / 2;
  const at::Tensor w_t = xvolution_deployed_pssa_weight(weight, g);
  // Ka > 1: oneDNN's direct convolution on NHWC slabs of images beats an im2col GEMM, whose operand would be
  // Ka² times T(X).
  const ProductMaps maps = pair_shifts(g);
  if (maps.taps() < g.S * g.Ka * g.Ka) {
    // Paired maps (fewer taps): the X part's conv, plus each group's conv of its maps, slab by slab.
    at::Tensor y = at::conv2d(x_cl, weight.narrow(1, 0, g.C), bias, {g.stride, g.stride}, {pad, pad});
    for (const auto& group : maps.groups) {
      const at::Tensor kernel = paired_weight(w_t, g, maps, group);
      const int64_t channels = static_cast<int64_t>(group.size()) * g.C;
      const int64_t Hz = (g.Ho - 1) * g.stride + kernel.size(2), Wz = (g.Wo - 1) * g.stride + kernel.size(3);
      const int64_t slab = slab_images(g, channels * Hz * Wz, x_cl.numel());
      at::Tensor buffer =
          at::empty({slab, channels, Hz, Wz}, x_cl.options().memory_format(at::MemoryFormat::ChannelsLast));
      for (int64_t b0 = 0; b0 < g.B; b0 += slab) {
        const int64_t b1 = std::min(g.B, b0 + slab);
        at::Tensor z = buffer.narrow(0, 0, b1 - b0);
        fill_maps_nhwc(x_cl.const_data_ptr<float>(), g, maps, group, Hz, Wz, b0, b1, z.mutable_data_ptr<float>());
        y.narrow(0, b0, b1 - b0).add_(at::conv2d(z, kernel, {}, {g.stride, g.stride}, at::IntArrayRef({0, 0})));
      }
    }
    return y.contiguous().to(x_in.scalar_type());
  }
  // With Ka = K no tap of W* is structurally zero: a slab holds [X, T(X)] of its images and runs W* as one conv.
  const bool one_conv = g.Ka == g.K;
  at::Tensor y = one_conv ? at::empty({g.B, g.Co, g.Ho, g.Wo}, x_cl.options())
                          : at::conv2d(x_cl, weight.narrow(1, 0, g.C), bias, {g.stride, g.stride}, {pad, pad});
  const int64_t in_channels = one_conv ? g.C * (1 + g.S) : g.S * g.C, image = in_channels * g.H * g.W;
  const int64_t slab = slab_images(g, image, x_cl.numel());
  at::Tensor buffer =
      at::empty({slab, in_channels, g.H, g.W}, x_cl.options().memory_format(at::MemoryFormat::ChannelsLast));
  for (int64_t b0 = 0; b0 < g.B; b0 += slab) {
    const int64_t b1 = std::min(g.B, b0 + slab);
    at::Tensor t = buffer.narrow(0, 0, b1 - b0);
    fill_products_nhwc(x_cl.const_data_ptr<float>(), g, b0, b1, one_conv, t.mutable_data_ptr<float>());
    if (one_conv) {
      y.narrow(0, b0, b1 - b0).copy_(at::conv2d(t, weight, bias, {g.stride, g.stride}, {pad, pad}));
    } else {
      y.narrow(0, b0, b1 - b0).add_(at::conv2d(t, w_t, {}, {g.stride, g.stride}, {g.Ka / 2, g.Ka / 2}));
    }
  }
  return y.contiguous().to(x_in.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(translution_ext, CPU, m) { m.impl("xvolution_deployed", &xvolution_deployed_cpu); }

}  // namespace translution_ext
