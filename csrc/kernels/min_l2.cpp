// Exact min-L2 search, compiled once per ISA.
//
// score(q, b) = ||b||^2 - 2 <q, b>; the nearest row minimises it, and
// dist = sqrt(max(||q||^2 + score, 0)). Every <q, b> is a single sequential FMA chain over
// k = 0..D-1 (one SIMD lane per (q, b) pair), so a value does not depend on the tiling, the
// thread count or which rows share a register block: ties resolve to the lowest index and any
// re-computation of one pair with the same chain reproduces it bit for bit.
//
// Blocking: the bank is streamed in tiles of TN rows, packed (converted to fp32 if stored as
// fp16/bf16) into panels of 32 rows laid out k-major, so the micro-kernel reads 32 consecutive
// floats per k. Threads share each packed tile and split the query blocks. Extra memory is one
// packed tile (<= 512 KiB) plus the running minimum per query: the Q x N matrix never exists.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "min_l2.h"

namespace vsad {
namespace VSAD_ISA {
namespace {

constexpr int64_t kPanel = 32;  // bank rows per packed panel
constexpr int64_t kMR = 12;     // queries per micro-kernel (24 accumulators + 2 + 1 zmm)

inline float madd(float a, float b, float c) {
#if defined(__FMA__)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float bank_value(const void* bank, BankType type, int64_t idx) {
  switch (type) {
    case BankType::f16: return half_to_float(static_cast<const uint16_t*>(bank)[idx]);
    case BankType::bf16: return bf16_to_float(static_cast<const uint16_t*>(bank)[idx]);
    default: return static_cast<const float*>(bank)[idx];
  }
}

// Packs bank rows [n0, n0 + rows) into panels: packed[p][k][j] = bank[n0 + 32p + j][k];
// rows past the end are zero (their norm is +inf, so they never win).
void pack_panel(const void* bank, BankType type, int64_t n0, int64_t rows, int64_t D,
                float* __restrict out) {
  for (int64_t j = 0; j < kPanel; ++j) {
    if (j < rows) {
      const int64_t base = (n0 + j) * D;
      if (type == BankType::f32) {
        const float* src = static_cast<const float*>(bank) + base;
        for (int64_t k = 0; k < D; ++k) out[k * kPanel + j] = src[k];
      } else {
        for (int64_t k = 0; k < D; ++k) out[k * kPanel + j] = bank_value(bank, type, base + k);
      }
    } else {
      for (int64_t k = 0; k < D; ++k) out[k * kPanel + j] = 0.0f;
    }
  }
}

// acc[i][j] = <q_i, b_j> for `mr` queries and the 32 rows of one panel.
void micro_kernel(const float* const* q, int64_t mr, const float* __restrict panel, int64_t D,
                  float (*acc)[kPanel]) {
#if defined(__AVX512F__)
  __m512 c0[kMR], c1[kMR];
  for (int64_t i = 0; i < kMR; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
  if (mr == kMR) {
    for (int64_t k = 0; k < D; ++k) {
      const __m512 b0 = _mm512_loadu_ps(panel + k * kPanel);
      const __m512 b1 = _mm512_loadu_ps(panel + k * kPanel + 16);
      for (int64_t i = 0; i < kMR; ++i) {
        const __m512 qi = _mm512_set1_ps(q[i][k]);
        c0[i] = _mm512_fmadd_ps(qi, b0, c0[i]);
        c1[i] = _mm512_fmadd_ps(qi, b1, c1[i]);
      }
    }
  } else {
    for (int64_t k = 0; k < D; ++k) {
      const __m512 b0 = _mm512_loadu_ps(panel + k * kPanel);
      const __m512 b1 = _mm512_loadu_ps(panel + k * kPanel + 16);
      for (int64_t i = 0; i < mr; ++i) {
        const __m512 qi = _mm512_set1_ps(q[i][k]);
        c0[i] = _mm512_fmadd_ps(qi, b0, c0[i]);
        c1[i] = _mm512_fmadd_ps(qi, b1, c1[i]);
      }
    }
  }
  for (int64_t i = 0; i < mr; ++i) {
    _mm512_storeu_ps(acc[i], c0[i]);
    _mm512_storeu_ps(acc[i] + 16, c1[i]);
  }
#else
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < kPanel; ++j) acc[i][j] = 0.0f;
  for (int64_t k = 0; k < D; ++k)
    for (int64_t i = 0; i < mr; ++i) {
      const float qk = q[i][k];
      const float* b = panel + k * kPanel;
#pragma omp simd
      for (int64_t j = 0; j < kPanel; ++j) acc[i][j] = madd(qk, b[j], acc[i][j]);
    }
#endif
}

float sq_norm_chain(const void* bank, BankType type, int64_t row, int64_t D) {
  float s = 0.0f;
  for (int64_t k = 0; k < D; ++k) {
    const float v = bank_value(bank, type, row * D + k);
    s = madd(v, v, s);
  }
  return s;
}

float query_sq_norm(const float* q, int64_t D) {
  float s = 0.0f;
  for (int64_t k = 0; k < D; ++k) s = madd(q[k], q[k], s);
  return s;
}

}  // namespace

void min_l2_bank_sq_norms(const void* bank, BankType type, int64_t N, int64_t D, float* out,
                          int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t n = 0; n < N; ++n) out[n] = sq_norm_chain(bank, type, n, D);
}

void min_l2_search(const MinL2Args& a) {
  const int64_t D = a.D;
  // A tile of at most ~512 KiB packed: it stays in L2 while every query block passes over it.
  int64_t tile = (int64_t(512) * 1024 / (4 * D)) / kPanel * kPanel;
  tile = tile < kPanel ? kPanel : tile;
  float* packed = static_cast<float*>(std::aligned_alloc(64, size_t(tile * D) * 4 + 64));
  float* best = static_cast<float*>(std::malloc(size_t(a.Q) * 4));
  if (!packed || !best) {
    std::free(packed);
    std::free(best);
    throw std::bad_alloc();
  }
  for (int64_t i = 0; i < a.Q; ++i) {
    best[i] = std::numeric_limits<float>::infinity();
    a.index[i] = -1;
  }
  const int64_t qblocks = (a.Q + kMR - 1) / kMR;

#pragma omp parallel num_threads(a.num_threads)
  {
    float acc[kMR][kPanel];
    for (int64_t n0 = 0; n0 < a.N; n0 += tile) {
      const int64_t rows = a.N - n0 < tile ? a.N - n0 : tile;
      const int64_t npanels = (rows + kPanel - 1) / kPanel;
#pragma omp for schedule(static)
      for (int64_t p = 0; p < npanels; ++p) {
        const int64_t r = rows - p * kPanel;
        pack_panel(a.bank, a.bank_type, n0 + p * kPanel, r < kPanel ? r : kPanel, D,
                   packed + p * kPanel * D);
      }
      // implicit barrier: the tile is packed
#pragma omp for schedule(static)
      for (int64_t qb = 0; qb < qblocks; ++qb) {
        const int64_t q0 = qb * kMR;
        const int64_t mr = a.Q - q0 < kMR ? a.Q - q0 : kMR;
        const float* qrows[kMR];
        for (int64_t i = 0; i < kMR; ++i) qrows[i] = a.queries + (q0 + (i < mr ? i : 0)) * D;
        for (int64_t p = 0; p < npanels; ++p) {
          micro_kernel(qrows, mr, packed + p * kPanel * D, D, acc);
          const int64_t base = n0 + p * kPanel;
          const int64_t valid = a.N - base < kPanel ? a.N - base : kPanel;
          for (int64_t i = 0; i < mr; ++i) {
            float bi = best[q0 + i];
            int64_t ii = a.index[q0 + i];
            for (int64_t j = 0; j < valid; ++j) {
              // Same expression as the re-rank path: one fused -2*dot + ||b||^2.
              const float s = madd(-2.0f, acc[i][j], a.bank_sq_norms[base + j]);
              if (s < bi) {  // strict: earlier (lower) indices win ties
                bi = s;
                ii = base + j;
              }
            }
            best[q0 + i] = bi;
            a.index[q0 + i] = ii;
          }
        }
      }
      // implicit barrier before the next tile is packed
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < a.Q; ++i) {
      const float d2 = query_sq_norm(a.queries + i * D, D) + best[i];
      a.dist[i] = std::sqrt(d2 > 0.0f ? d2 : 0.0f);
    }
  }
  std::free(packed);
  std::free(best);
}

}  // namespace VSAD_ISA
}  // namespace vsad
