// Row maps: the layout conversions of the CPU ACmix kernel (reflection padding, stride phases,
// margins, window centres and their adjoints) as one mechanism.  A row map sends each source
// row to a destination row through a fixed column map, channel by channel:
//
//   dst[c][row i][x] = Σ over the source rows j of row i, Σ over the terms of x's chunk:
//                      src[c][row j][term.src + term.idx[x - chunk.dst]]   (minus `sub`, if given)
//
// Destination columns go in chunks of `width` lanes (one vector); a term is one masked vector
// load from the source row, permuted into the chunk's lanes.  Only the lanes that some term
// writes are stored, so the destination's other columns stay as they are.  Every value sums
// its terms in a fixed order (source rows, then the map's terms): the same result every call.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "acmix_window_shifts.h"

namespace translution_ext {

constexpr int kRowMapMaxWidth = 16;

struct RowMap {
  struct Term {
    int64_t src;                    // source column of the loaded vector's first lane
    uint32_t load_mask, lanes;      // loaded lanes inside the source row; destination lanes written
    int32_t idx[kRowMapMaxWidth];   // destination lane i takes loaded lane idx[i]
  };
  struct Chunk {
    int64_t dst;                    // destination column of the chunk's first lane
    uint32_t store_mask;            // the lanes some term writes
    int64_t first_term, end_term;   // its terms: terms[first_term, end_term)
  };
  int isa = 0;                      // the build that applies it (shift_isa())
  int width() const { return isa == kIsaAvx512 ? 16 : 8; }  // lanes per chunk: one vector of the build
  std::vector<Chunk> chunks;
  std::vector<Term> terms;
  std::vector<int64_t> dst_rows;             // per destination row of one channel: its offset
  std::vector<int64_t> src_begin, src_rows;  // its source rows' offsets: src_rows[src_begin[i], src_begin[i + 1])
  int64_t dst_channel = 0, src_channel = 0;  // channel strides
  bool one_source_row = true;                // every destination row has exactly one
};

// columns: (destination column, source column) pairs; a destination column listed twice sums
// both (the adjoint of a padding).  src_len: the source row's length (loads stay inside it).
// dst_len: 0 to store only the columns listed, or the destination row's length to store every
// column of it (zero where none is listed).  rows: per destination row, its offset and the
// offsets of its source rows (with none, the stored columns are zero).
RowMap make_row_map(const std::vector<std::pair<int64_t, int64_t>>& columns, int64_t src_len, int64_t dst_len,
                    const std::vector<std::pair<int64_t, std::vector<int64_t>>>& rows, int64_t dst_channel,
                    int64_t src_channel, int isa);

// Applies the map to `channels` channels.  sub (may be null) has src's offsets and is
// subtracted from every loaded value.
template <typename S, typename T>
void apply_row_map(const RowMap& map, int64_t channels, const S* src, const S* sub, T* dst);

// The same with nothing subtracted.
template <typename S, typename T>
inline void apply_row_map(const RowMap& map, int64_t channels, const S* src, T* dst) {
  apply_row_map<S, T>(map, channels, src, static_cast<const S*>(nullptr), dst);
}

}  // namespace translution_ext
