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

// Packs `rows` bank rows n0, n0 + stride, n0 + 2·stride, ... into one panel:
// out[k][j] = bank[n0 + j·stride][k]; panel rows past `rows` are zero (never read as results).
void pack_panel(const void* bank, BankType type, int64_t n0, int64_t rows, int64_t D,
                float* __restrict out, int64_t stride = 1) {
  for (int64_t j = 0; j < kPanel; ++j) {
    if (j < rows) {
      const int64_t base = (n0 + j * stride) * D;
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

// out[i][j] = <q[i], b[j]> for up to 4 x 4 row-major float rows (no packing: used by the local
// search, whose bank rows are strided and each reused by only a few query blocks).
void dots_4x4(const float* const* q, int64_t mq, const float* const* b, int64_t mb, int64_t D,
              float (*out)[4]) {
#if defined(__AVX512F__)
  __m512 acc[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
  const float* qq[4];
  const float* bb[4];
  for (int64_t i = 0; i < 4; ++i) qq[i] = q[i < mq ? i : 0];
  for (int64_t j = 0; j < 4; ++j) bb[j] = b[j < mb ? j : 0];
  int64_t k = 0;
  for (; k + 16 <= D; k += 16) {
    __m512 bv[4];
    for (int j = 0; j < 4; ++j) bv[j] = _mm512_loadu_ps(bb[j] + k);
    for (int i = 0; i < 4; ++i) {
      const __m512 qv = _mm512_loadu_ps(qq[i] + k);
      for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_fmadd_ps(qv, bv[j], acc[i][j]);
    }
  }
  if (k < D) {
    const __mmask16 m = __mmask16((1u << (D - k)) - 1);
    __m512 bv[4];
    for (int j = 0; j < 4; ++j) bv[j] = _mm512_maskz_loadu_ps(m, bb[j] + k);
    for (int i = 0; i < 4; ++i) {
      const __m512 qv = _mm512_maskz_loadu_ps(m, qq[i] + k);
      for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_fmadd_ps(qv, bv[j], acc[i][j]);
    }
  }
  for (int64_t i = 0; i < mq; ++i)
    for (int64_t j = 0; j < mb; ++j) out[i][j] = _mm512_reduce_add_ps(acc[i][j]);
#else
  for (int64_t i = 0; i < mq; ++i)
    for (int64_t j = 0; j < mb; ++j) {
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < D; ++k) s += q[i][k] * b[j][k];
      out[i][j] = s;
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

void min_l2_local_search(const MinL2LocalArgs& a) {
  const int64_t D = a.D, HW = a.H * a.W, Qn = a.B * HW, rho = a.radius;
  const int64_t win = (2 * rho + 1) * (2 * rho + 1) * a.B;
  const int nt = a.num_threads;
  float* best_all = static_cast<float*>(std::malloc(size_t(nt) * Qn * 4));
  int64_t* idx_all = static_cast<int64_t*>(std::malloc(size_t(nt) * Qn * 8));
  if (!best_all || !idx_all) {
    std::free(best_all);
    std::free(idx_all);
    throw std::bad_alloc();
  }
  for (int64_t e = 0; e < int64_t(nt) * Qn; ++e) {
    best_all[e] = std::numeric_limits<float>::infinity();
    idx_all[e] = -1;
  }
  int used_threads = 1;
#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num();
#pragma omp single
    used_threads = omp_get_num_threads();
    float* best = best_all + int64_t(tid) * Qn;
    int64_t* idx = idx_all + int64_t(tid) * Qn;
    const float** qrows = static_cast<const float**>(std::malloc(size_t(win) * sizeof(float*)));
    int64_t* qidx = static_cast<int64_t*>(std::malloc(size_t(win) * 8));
    const float** brows = static_cast<const float**>(std::malloc(size_t(a.S) * sizeof(float*)));
    float* norms = static_cast<float*>(std::malloc(size_t(a.S) * 4));  // ||b||^2 of position p'
    // fp16/bf16 banks: the S rows of a position are converted once into this buffer.
    float* converted = a.bank_type == BankType::f32
                           ? nullptr
                           : static_cast<float*>(std::malloc(size_t(a.S * D) * 4));
    float out[4][4];
    // Bank position p' is compared with every query pixel whose window contains it: its S rows
    // are read once from memory and reused from cache by all those queries.
#pragma omp for schedule(static)
    for (int64_t pp = 0; pp < HW; ++pp) {
      const int64_t yb = pp / a.W, xb = pp % a.W;
      for (int64_t si = 0; si < a.S; ++si) {
        const int64_t row = si * HW + pp;
        norms[si] = a.bank_sq_norms[row];
        if (converted) {
          for (int64_t k = 0; k < D; ++k)
            converted[si * D + k] = bank_value(a.bank, a.bank_type, row * D + k);
          brows[si] = converted + si * D;
        } else {
          brows[si] = static_cast<const float*>(a.bank) + row * D;
        }
      }
      int64_t nq = 0;
      for (int64_t y = yb - rho; y <= yb + rho; ++y) {
        if (y < 0 || y >= a.H) continue;
        for (int64_t x = xb - rho; x <= xb + rho; ++x) {
          if (x < 0 || x >= a.W) continue;
          for (int64_t b = 0; b < a.B; ++b) {
            qidx[nq] = b * HW + y * a.W + x;
            qrows[nq] = a.queries + qidx[nq] * D;
            ++nq;
          }
        }
      }
      for (int64_t q0 = 0; q0 < nq; q0 += 4) {
        const int64_t mq = nq - q0 < 4 ? nq - q0 : 4;
        for (int64_t s0 = 0; s0 < a.S; s0 += 4) {
          const int64_t mb = a.S - s0 < 4 ? a.S - s0 : 4;
          dots_4x4(qrows + q0, mq, brows + s0, mb, D, out);
          for (int64_t i = 0; i < mq; ++i) {
            const int64_t qi = qidx[q0 + i];
            for (int64_t j = 0; j < mb; ++j) {
              const int64_t flat = (s0 + j) * HW + pp;
              const float sc = madd(-2.0f, out[i][j], norms[s0 + j]);
              if (sc < best[qi] || (sc == best[qi] && flat < idx[qi])) {
                best[qi] = sc;
                idx[qi] = flat;
              }
            }
          }
        }
      }
    }
    std::free(qrows);
    std::free(qidx);
    std::free(brows);
    std::free(norms);
    std::free(converted);
    // implicit barrier of the loop above; merge the per-thread minima (lowest index on ties)
#pragma omp for schedule(static)
    for (int64_t qi = 0; qi < Qn; ++qi) {
      float bv = best_all[qi];
      int64_t bi = idx_all[qi];
      for (int t = 1; t < used_threads; ++t) {
        const float v = best_all[int64_t(t) * Qn + qi];
        const int64_t i = idx_all[int64_t(t) * Qn + qi];
        if (v < bv || (v == bv && i >= 0 && (bi < 0 || i < bi))) {
          bv = v;
          bi = i;
        }
      }
      const float d2 = query_sq_norm(a.queries + qi * D, D) + bv;
      a.dist[qi] = std::sqrt(d2 > 0.0f ? d2 : 0.0f);
      a.index[qi] = bi;
    }
  }
  std::free(best_all);
  std::free(idx_all);
}

}  // namespace VSAD_ISA
}  // namespace vsad
