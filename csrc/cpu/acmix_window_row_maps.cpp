// Row maps (acmix_window_row_maps.h): the plan, and its application in three builds for fp32
// (AVX-512: a chunk is one 16-float vector, its terms masked loads and lane permutes; AVX2: 8
// floats; portable: lane by lane), picked by the map's isa; fp64 and the 16-bit types go lane
// by lane (the products, not these copies, are where their time goes).
#include "acmix_window_row_maps.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>

#include "x86_builds.h"

#if TRANSLUTION_EXT_X86_BUILDS
#include <immintrin.h>
#endif

namespace translution_ext {

RowMap make_row_map(const std::vector<std::pair<int64_t, int64_t>>& columns, int64_t src_len, int64_t dst_len,
                    const std::vector<std::pair<int64_t, std::vector<int64_t>>>& rows, int64_t dst_channel,
                    int64_t src_channel, int isa) {
  RowMap m;
  m.isa = isa;
  const int width = m.width();
  m.dst_channel = dst_channel;
  m.src_channel = src_channel;
  auto cols = columns;
  std::stable_sort(cols.begin(), cols.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [d, s] : cols)
    TORCH_INTERNAL_ASSERT(d >= 0 && (dst_len == 0 || d < dst_len) && s >= 0 && s < src_len,
                          "row map column out of range");
  size_t i = 0;
  int64_t d0 = 0;
  while (dst_len > 0 ? d0 < dst_len : i < cols.size()) {
    if (dst_len == 0) d0 = cols[i].first;  // chunks start where the written columns do
    std::vector<std::pair<int, int64_t>> pending;  // (lane, source column), in the order listed
    for (; i < cols.size() && cols[i].first < d0 + width; ++i)
      pending.emplace_back(static_cast<int>(cols[i].first - d0), cols[i].second);
    RowMap::Chunk chunk{d0, 0, static_cast<int64_t>(m.terms.size()), 0};
    if (dst_len > 0)  // every column of the row is written, zero where no term adds to it
      chunk.store_mask = static_cast<uint32_t>((uint64_t(1) << std::min<int64_t>(width, dst_len - d0)) - 1);
    while (!pending.empty()) {
      // One term: a vector load from the smallest source column left; each lane takes the first
      // of its pairs that the vector holds, and later terms the others.
      RowMap::Term t{};
      t.src = pending.front().second;
      for (const auto& p : pending) t.src = std::min(t.src, p.second);
      for (int k = 0; k < width; ++k)
        if (t.src + k < src_len) t.load_mask |= 1u << k;
      std::vector<std::pair<int, int64_t>> rest;
      for (const auto& [lane, s] : pending) {
        if (s < t.src + width && !(t.lanes >> lane & 1u)) {
          t.lanes |= 1u << lane;
          t.idx[lane] = static_cast<int32_t>(s - t.src);
        } else {
          rest.emplace_back(lane, s);
        }
      }
      pending.swap(rest);
      chunk.store_mask |= t.lanes;
      m.terms.push_back(t);
    }
    chunk.end_term = static_cast<int64_t>(m.terms.size());
    m.chunks.push_back(chunk);
    d0 += width;
  }
  m.src_begin.push_back(0);
  for (const auto& [dst_row, src_rows] : rows) {
    m.dst_rows.push_back(dst_row);
    m.src_rows.insert(m.src_rows.end(), src_rows.begin(), src_rows.end());
    m.src_begin.push_back(static_cast<int64_t>(m.src_rows.size()));
    m.one_source_row = m.one_source_row && src_rows.size() == 1;
  }
  return m;
}

namespace {

// Lane by lane, in the accumulation type of the pair.
template <typename S, typename T>
void apply_portable(const RowMap& m, int64_t channels, const S* src, const S* sub, T* dst) {
  using A = std::conditional_t<std::is_same_v<S, double> || std::is_same_v<T, double>, double, float>;
  const int64_t nrows = static_cast<int64_t>(m.dst_rows.size());
  const int width = m.width();
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t i = 0; i < nrows; ++i) {
      T* drow = dst + c * m.dst_channel + m.dst_rows[i];
      for (const auto& ch : m.chunks) {
        A acc[kRowMapMaxWidth] = {};
        for (int64_t j = m.src_begin[i]; j < m.src_begin[i + 1]; ++j) {
          const int64_t at = c * m.src_channel + m.src_rows[j];
          for (int64_t t = ch.first_term; t < ch.end_term; ++t) {
            const RowMap::Term& term = m.terms[t];
            for (int k = 0; k < width; ++k)
              if (term.lanes >> k & 1u) {
                const int64_t s = at + term.src + term.idx[k];
                acc[k] += sub ? A(src[s]) - A(sub[s]) : A(src[s]);
              }
          }
        }
        for (int k = 0; k < width; ++k)
          if (ch.store_mask >> k & 1u) drow[ch.dst + k] = static_cast<T>(acc[k]);
      }
    }
}

#if TRANSLUTION_EXT_X86_BUILDS
// acc + the term's lanes of the source row (minus sub's).
template <bool Sub>
TRANSLUTION_EXT_AVX512 inline __attribute__((always_inline)) __m512 add_term_avx512(
    __m512 acc, const float* s, const float* b, int64_t at, __mmask16 load, __mmask16 lanes, __m512i idx) {
  __m512 v = _mm512_maskz_loadu_ps(load, s + at);
  if constexpr (Sub) v = _mm512_sub_ps(v, _mm512_maskz_loadu_ps(load, b + at));
  return _mm512_add_ps(acc, _mm512_maskz_permutexvar_ps(lanes, idx, v));
}

// One chunk of every row of one channel, its N terms held in registers (N = 0: any number,
// read from the map): the loop over the rows then only loads, permutes, adds and stores.
// One: every row has one source row.
template <bool Sub, bool One, int N>
TRANSLUTION_EXT_AVX512 inline __attribute__((always_inline)) void chunk_avx512(
    const RowMap& m, const RowMap::Chunk& ch, const float* src, const float* sub, float* dst) {
  constexpr int K = N > 0 ? N : 1;
  __m512i idx[K];
  __mmask16 load[K], lanes[K];
  int64_t at[K];
  for (int n = 0; n < N; ++n) {
    const RowMap::Term& t = m.terms[ch.first_term + n];
    idx[n] = _mm512_loadu_si512(t.idx);
    load[n] = static_cast<__mmask16>(t.load_mask);
    lanes[n] = static_cast<__mmask16>(t.lanes);
    at[n] = t.src;
  }
  const __mmask16 store = static_cast<__mmask16>(ch.store_mask);
  const int64_t nrows = static_cast<int64_t>(m.dst_rows.size());
  float* d = dst + ch.dst;
  for (int64_t i = 0; i < nrows; ++i) {
    __m512 acc = _mm512_setzero_ps();
    const int64_t j0 = One ? i : m.src_begin[i], j1 = One ? i + 1 : m.src_begin[i + 1];
    for (int64_t j = j0; j < j1; ++j) {
      const float* s = src + m.src_rows[j];
      const float* b = Sub ? sub + m.src_rows[j] : nullptr;
      if constexpr (N > 0) {
#pragma GCC unroll 4
        for (int n = 0; n < N; ++n) acc = add_term_avx512<Sub>(acc, s, b, at[n], load[n], lanes[n], idx[n]);
      } else {
        for (int64_t t = ch.first_term; t < ch.end_term; ++t) {
          const RowMap::Term& term = m.terms[t];
          acc = add_term_avx512<Sub>(acc, s, b, term.src, static_cast<__mmask16>(term.load_mask),
                                     static_cast<__mmask16>(term.lanes), _mm512_loadu_si512(term.idx));
        }
      }
    }
    _mm512_mask_storeu_ps(d + m.dst_rows[i], store, acc);
  }
}

// Channel by channel (its rows stay in L1 across the chunks), chunk by chunk.
template <bool Sub, bool One>
TRANSLUTION_EXT_AVX512 void apply_avx512(const RowMap& m, int64_t channels, const float* src, const float* sub,
                                         float* dst) {
  for (int64_t c = 0; c < channels; ++c) {
    const float* sc = src + c * m.src_channel;
    const float* bc = Sub ? sub + c * m.src_channel : nullptr;
    float* dc = dst + c * m.dst_channel;
    for (const auto& ch : m.chunks) {
      switch (ch.end_term - ch.first_term) {
        case 1: chunk_avx512<Sub, One, 1>(m, ch, sc, bc, dc); break;
        case 2: chunk_avx512<Sub, One, 2>(m, ch, sc, bc, dc); break;
        case 3: chunk_avx512<Sub, One, 3>(m, ch, sc, bc, dc); break;
        case 4: chunk_avx512<Sub, One, 4>(m, ch, sc, bc, dc); break;
        default: chunk_avx512<Sub, One, 0>(m, ch, sc, bc, dc); break;
      }
    }
  }
}

// Lane k of the mask vector is all ones where bit k of `bits` is set.
TRANSLUTION_EXT_AVX2 inline __m256i avx2_lane_mask(uint32_t bits) {
  const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i set = _mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), lane_bits);
  return _mm256_cmpeq_epi32(set, lane_bits);
}

template <bool Sub>
TRANSLUTION_EXT_AVX2 void apply_avx2(const RowMap& m, int64_t channels, const float* src, const float* sub,
                                     float* dst) {
  const int64_t nrows = static_cast<int64_t>(m.dst_rows.size());
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t i = 0; i < nrows; ++i) {
      float* drow = dst + c * m.dst_channel + m.dst_rows[i];
      for (const auto& ch : m.chunks) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t j = m.src_begin[i]; j < m.src_begin[i + 1]; ++j) {
          const int64_t at = c * m.src_channel + m.src_rows[j];
          for (int64_t t = ch.first_term; t < ch.end_term; ++t) {
            const RowMap::Term& term = m.terms[t];
            const __m256i load = avx2_lane_mask(term.load_mask);
            __m256 v = _mm256_maskload_ps(src + at + term.src, load);
            if constexpr (Sub) v = _mm256_sub_ps(v, _mm256_maskload_ps(sub + at + term.src, load));
            const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(term.idx));
            const __m256 lanes = _mm256_castsi256_ps(avx2_lane_mask(term.lanes));
            acc = _mm256_add_ps(acc, _mm256_and_ps(_mm256_permutevar8x32_ps(v, idx), lanes));
          }
        }
        _mm256_maskstore_ps(drow + ch.dst, avx2_lane_mask(ch.store_mask), acc);
      }
    }
}
#endif

}  // namespace

template <typename S, typename T>
void apply_row_map(const RowMap& m, int64_t channels, const S* src, const S* sub, T* dst) {
#if TRANSLUTION_EXT_X86_BUILDS
  if constexpr (std::is_same_v<S, float> && std::is_same_v<T, float>) {
    if (m.isa == kIsaAvx512) {  // width 16
      if (m.one_source_row)
        return sub ? apply_avx512<true, true>(m, channels, src, sub, dst)
                   : apply_avx512<false, true>(m, channels, src, sub, dst);
      return sub ? apply_avx512<true, false>(m, channels, src, sub, dst)
                 : apply_avx512<false, false>(m, channels, src, sub, dst);
    }
    if (m.isa == kIsaAvx2)  // width 8
      return sub ? apply_avx2<true>(m, channels, src, sub, dst) : apply_avx2<false>(m, channels, src, sub, dst);
  }
#endif
  apply_portable(m, channels, src, sub, dst);
}

template void apply_row_map<float, float>(const RowMap&, int64_t, const float*, const float*, float*);
template void apply_row_map<double, double>(const RowMap&, int64_t, const double*, const double*, double*);
template void apply_row_map<c10::Half, float>(const RowMap&, int64_t, const c10::Half*, const c10::Half*, float*);
template void apply_row_map<float, c10::Half>(const RowMap&, int64_t, const float*, const float*, c10::Half*);
template void apply_row_map<c10::BFloat16, float>(const RowMap&, int64_t, const c10::BFloat16*,
                                                  const c10::BFloat16*, float*);
template void apply_row_map<float, c10::BFloat16>(const RowMap&, int64_t, const float*, const float*,
                                                  c10::BFloat16*);

}  // namespace translution_ext
