// The conversions between the op's channel-major maps and the layouts of acmix_window_shifts.h,
// as row maps (acmix_window_row_maps.h), planned once per call for the CPU ACmix kernel.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "../acmix_window_attention.h"
#include "acmix_window_row_maps.h"
#include "acmix_window_shifts.h"

namespace translution_ext {

struct LayoutMaps {
  // (hd, H, W) -> the reflection-padded key side (hd, Hp, stride, cols): the columns some window
  // reads (the others must be zero: a buffer zeroed once keeps them so).
  RowMap key_in;
  // Its adjoint: key side -> (hd, H, W), reflected pixels summed; every pixel is written.
  RowMap key_out;
  // (channels, H, W) at the window centres -> query side (channels, Ho, row): the output
  // pixels only (the margins must be zero, as for key_in).
  RowMap centres_in;
  // Query side -> the window centres of (channels, H, W); the pixels between are left as they are.
  RowMap centres_out;
  // (channels, Ho, Wo) <-> query side.
  RowMap outputs_in, outputs_out;

  LayoutMaps(const ShiftLayout& l, int64_t H, int64_t W) {
    using Columns = std::vector<std::pair<int64_t, int64_t>>;
    using Rows = std::vector<std::pair<int64_t, std::vector<int64_t>>>;
    const int64_t half = l.ka / 2, Wp = (l.Wo - 1) * l.s + l.ka, pitch = l.s * l.cols;  // pitch: one padded row
    Columns padded, folded;  // padded column c at phase c % s, column c / s; and back
    for (int64_t c = 0; c < Wp; ++c) {
      padded.emplace_back(c % l.s * l.cols + c / l.s, reflect(c - half, W));
      folded.emplace_back(reflect(c - half, W), c % l.s * l.cols + c / l.s);
    }
    Rows padded_rows, folded_rows(H);
    for (int64_t h = 0; h < H; ++h) folded_rows[h].first = h * W;
    for (int64_t r = 0; r < l.Hp; ++r) {
      const int64_t h = reflect(r - half, H);
      padded_rows.push_back({r * pitch, {h * W}});
      folded_rows[h].second.push_back(r * pitch);  // in the order of the padded rows
    }
    key_in = make_row_map(padded, W, 0, padded_rows, l.key_plane(), H * W, l.isa);
    key_out = make_row_map(folded, pitch, W, folded_rows, H * W, l.key_plane(), l.isa);

    Columns centres, centres_back, outputs, outputs_back;
    for (int64_t xo = 0; xo < l.Wo; ++xo) {
      centres.emplace_back(l.margin + xo, xo * l.s);
      centres_back.emplace_back(xo * l.s, l.margin + xo);
      outputs.emplace_back(l.margin + xo, xo);
      outputs_back.emplace_back(xo, l.margin + xo);
    }
    Rows centre_rows, centre_rows_back, output_rows, output_rows_back;
    for (int64_t yo = 0; yo < l.Ho; ++yo) {
      centre_rows.push_back({yo * l.row, {yo * l.s * W}});
      centre_rows_back.push_back({yo * l.s * W, {yo * l.row}});
      output_rows.push_back({yo * l.row, {yo * l.Wo}});
      output_rows_back.push_back({yo * l.Wo, {yo * l.row}});
    }
    centres_in = make_row_map(centres, W, 0, centre_rows, l.Ho_row(), H * W, l.isa);
    centres_out = make_row_map(centres_back, l.row, 0, centre_rows_back, H * W, l.Ho_row(), l.isa);
    outputs_in = make_row_map(outputs, l.Wo, 0, output_rows, l.Ho_row(), l.Ho * l.Wo, l.isa);
    outputs_out = make_row_map(outputs_back, l.row, l.Wo, output_rows_back, l.Ho * l.Wo, l.Ho_row(), l.isa);
  }
};

}  // namespace translution_ext
