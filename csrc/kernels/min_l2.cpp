// Exact min-L2 search and the bank norms it uses, compiled once per ISA.
//
// score(q, b) = fma(-2, <q, b>, ||b||^2); the nearest row minimises it, and
// dist = sqrt(max(||q||^2 + score, 0)). Every <q, b> is a single sequential FMA chain over
// k = 0..D-1 (one SIMD lane per (q, b) pair, min_l2_common.h), so a value does not depend on the
// tiling, the thread count or which rows share a register block: ties resolve to the lowest
// index and any re-computation of one pair with the same chain reproduces it bit for bit.
//
// Blocking: the bank is streamed in tiles of at most ~512 KiB once packed (converted to fp32 if
// stored as fp16/bf16) into panels of 32 rows laid out k-major, so the 12x32 micro-kernel reads
// 32 consecutive floats per k. Threads share each packed tile and split the query blocks; the
// running minimum per query lives in the output arrays. Extra memory is one packed tile: the
// Q x N matrix never exists. With fewer query blocks than threads (a handful of queries), the
// threads split the bank tiles instead and merge their minima at the end.
#include <omp.h>

#include "kernels/min_l2_common.h"
#include "scratch.h"

namespace vsad {
namespace VSAD_ISA {
namespace {

int64_t tile_rows(int64_t D) {
  const int64_t rows = (int64_t(512) * 1024 / (4 * D)) / kPanel * kPanel;
  return rows < kPanel ? kPanel : rows;
}

// Norms of panel rows base..base+31 with NaN past the bank's end (NaN never wins a comparison).
const float* panel_norms(const float* norms, int64_t base, int64_t N, float* pad) {
  if (N - base >= kPanel) return norms + base;
  for (int64_t j = 0; j < kPanel; ++j)
    pad[j] = base + j < N ? norms[base + j] : std::numeric_limits<float>::quiet_NaN();
  return pad;
}

// Scores the query rows q0..q0+mr-1 against the packed tile starting at bank row n0 and folds
// them into best[0..mr) / index[0..mr).
void search_block(const MinL2Args& a, int64_t q0, int64_t mr, const float* packed, int64_t n0,
                  int64_t rows, float* best, int64_t* index) {
  const int64_t D = a.D;
  const float* qrows[kMR];
  for (int64_t i = 0; i < kMR; ++i) qrows[i] = a.queries + (q0 + (i < mr ? i : 0)) * D;
  float acc[kMR][kPanel];
  float pad[kPanel];
  const int64_t npanels = (rows + kPanel - 1) / kPanel;
  for (int64_t p = 0; p < npanels; ++p) {
    micro_kernel(qrows, mr, packed + p * kPanel * D, D, acc);
    const int64_t base = n0 + p * kPanel;
    fold_scores(acc, mr, panel_norms(a.bank_sq_norms, base, a.N, pad), base, best, index);
  }
}

void pack_tile(const MinL2Args& a, int64_t n0, int64_t rows, float* packed, float* row_buf,
               bool parallel) {
  const int64_t npanels = (rows + kPanel - 1) / kPanel;
  if (parallel) {
#pragma omp for schedule(static)
    for (int64_t p = 0; p < npanels; ++p) {
      const int64_t r = rows - p * kPanel;
      pack_panel(a.bank, a.bank_type, n0 + p * kPanel, r < kPanel ? r : kPanel, a.D,
                 packed + p * kPanel * a.D, row_buf);
    }
  } else {
    for (int64_t p = 0; p < npanels; ++p) {
      const int64_t r = rows - p * kPanel;
      pack_panel(a.bank, a.bank_type, n0 + p * kPanel, r < kPanel ? r : kPanel, a.D,
                 packed + p * kPanel * a.D, row_buf);
    }
  }
}

// Many queries: threads share each packed tile and split the query blocks.
void search_split_queries(const MinL2Args& a) {
  const int64_t D = a.D, tile = tile_rows(D);
  ScratchBlock packed_block(size_t(tile * D) * 4);
  float* packed = packed_block.as<float>();
  float* best = a.dist;  // running best score, turned into the distance at the end
  const int64_t qblocks = (a.Q + kMR - 1) / kMR;
#pragma omp parallel num_threads(a.num_threads)
  {
    float* row_buf = new float[D];
#pragma omp for schedule(static)
    for (int64_t i = 0; i < a.Q; ++i) {
      best[i] = std::numeric_limits<float>::infinity();
      a.index[i] = 0;
    }
    for (int64_t n0 = 0; n0 < a.N; n0 += tile) {
      const int64_t rows = a.N - n0 < tile ? a.N - n0 : tile;
      pack_tile(a, n0, rows, packed, row_buf, true);  // ends with a barrier: the tile is packed
#pragma omp for schedule(static)
      for (int64_t qb = 0; qb < qblocks; ++qb) {
        const int64_t q0 = qb * kMR;
        const int64_t mr = a.Q - q0 < kMR ? a.Q - q0 : kMR;
        search_block(a, q0, mr, packed, n0, rows, best + q0, a.index + q0);
      }
      // implicit barrier before the next tile is packed
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < a.Q; ++i)
      a.dist[i] = score_to_dist(query_sq_norm(a.queries + i * D, D), best[i]);
    delete[] row_buf;
  }
}

// Few queries: each thread scans its own share of the bank tiles with private minima.
void search_split_bank(const MinL2Args& a, int threads) {
  const int64_t D = a.D, tile = tile_rows(D), Q = a.Q;
  const int64_t ntiles = (a.N + tile - 1) / tile;
  if (threads > ntiles) threads = int(ntiles);
  ScratchBlock packed_block(size_t(threads) * size_t(tile * D) * 4);
  ScratchBlock best_block(size_t(threads) * size_t(Q) * 12);
  float* best_all = best_block.as<float>();
  int64_t* index_all = reinterpret_cast<int64_t*>(best_all + threads * Q);
  int used = 1;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
#pragma omp single
    used = omp_get_num_threads();
    float* packed = packed_block.as<float>() + int64_t(t) * tile * D;
    float* best = best_all + int64_t(t) * Q;
    int64_t* index = index_all + int64_t(t) * Q;
    float* row_buf = new float[D];
    for (int64_t i = 0; i < Q; ++i) {
      best[i] = std::numeric_limits<float>::infinity();
      index[i] = -1;
    }
    // Contiguous tile ranges per thread: thread t holds lower indices than thread t+1.
#pragma omp for schedule(static)
    for (int64_t ti = 0; ti < ntiles; ++ti) {
      const int64_t n0 = ti * tile, rows = a.N - n0 < tile ? a.N - n0 : tile;
      pack_tile(a, n0, rows, packed, row_buf, false);
      for (int64_t q0 = 0; q0 < Q; q0 += kMR)
        search_block(a, q0, Q - q0 < kMR ? Q - q0 : kMR, packed, n0, rows, best + q0, index + q0);
    }
    delete[] row_buf;
  }
  for (int64_t i = 0; i < Q; ++i) {
    float bv = std::numeric_limits<float>::infinity();
    int64_t bi = 0;
    for (int t = 0; t < used; ++t) {  // in thread order = increasing index: strict < keeps ties
      const float v = best_all[int64_t(t) * Q + i];
      if (index_all[int64_t(t) * Q + i] >= 0 && v < bv) {
        bv = v;
        bi = index_all[int64_t(t) * Q + i];
      }
    }
    a.dist[i] = score_to_dist(query_sq_norm(a.queries + i * a.D, a.D), bv);
    a.index[i] = bi;
  }
}

float sq_norm_chain(const void* bank, BankType type, int64_t row, int64_t D, float* row_buf) {
  load_row(bank, type, row, D, row_buf);
  return query_sq_norm(row_buf, D);
}

}  // namespace

void min_l2_bank_sq_norms(const void* bank, BankType type, int64_t N, int64_t D, float* out,
                          int num_threads) {
#pragma omp parallel num_threads(num_threads)
  {
    float* row_buf = new float[D];
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) out[n] = sq_norm_chain(bank, type, n, D, row_buf);
    delete[] row_buf;
  }
}

void min_l2_search(const MinL2Args& a) {
  const int64_t qblocks = (a.Q + kMR - 1) / kMR;
  if (a.num_threads > 1 && qblocks < 2 * int64_t(a.num_threads) && a.N > 2 * tile_rows(a.D))
    search_split_bank(a, a.num_threads);
  else
    search_split_queries(a);
}

}  // namespace VSAD_ISA
}  // namespace vsad
