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


// ---------------------------------------------------------------------------------------------
// Mixed precision: screen with bf16 products, re-rank the survivors with the exact fp32 chain.
//
// Guarantee (identical to min_l2_search): rounding q and b to bf16 (unit roundoff u = 2^-8)
// changes <q, b> by at most (2u + u^2) ||q|| ||b|| (Cauchy-Schwarz); the fp32 accumulations of
// the screen and of the exact path each add at most ~D 2^-24 ||q|| ||b||; the final
// fma(-2, dot, ||b||^2) roundings add at most 2^-23 (||b||^2 + 2 ||q|| ||b||). With
// delta = 2 (2u + u^2 + 2.1 D 2^-24) ||q|| ||b|| + 2^-22 (||b||^2 + 2 ||q|| ||b||) + tiny,
// the fp32 score s32 of every pair lies in [s_bf16 - delta, s_bf16 + delta]. So the exact
// path's minimiser (and every row tied with it) has lower <= min(upper): it is never screened
// out, and re-ranking the survivors with the very same fp32 chain returns the same row and
// distance. A query whose survivor list overflows is searched again exactly.
#if defined(__AVX512BF16__)
namespace {

constexpr int64_t kCandidates = 64;

inline uint16_t float_to_bf16_rne(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

// Bank rows n0 + j (j < rows) as bf16 pairs: out[kp][j] = (b[2kp], b[2kp+1]); zero padding.
void pack_panel_bf16(const void* bank, BankType type, int64_t n0, int64_t rows, int64_t D,
                     uint32_t* __restrict out) {
  const int64_t KP = (D + 1) / 2;
  for (int64_t j = 0; j < kPanel; ++j) {
    for (int64_t kp = 0; kp < KP; ++kp) {
      uint32_t pair = 0;
      if (j < rows) {
        const int64_t base = (n0 + j) * D;
        const uint16_t lo = float_to_bf16_rne(bank_value(bank, type, base + 2 * kp));
        const uint16_t hi =
            2 * kp + 1 < D ? float_to_bf16_rne(bank_value(bank, type, base + 2 * kp + 1)) : 0;
        pair = uint32_t(lo) | (uint32_t(hi) << 16);
      }
      out[kp * kPanel + j] = pair;
    }
  }
}

float exact_score(const float* q, const void* bank, BankType type, int64_t row, int64_t D,
                  float norm) {
  float s = 0.0f;  // the same sequential chain as the fp32 micro-kernel's lanes
  for (int64_t k = 0; k < D; ++k) s = madd(q[k], bank_value(bank, type, row * D + k), s);
  return madd(-2.0f, s, norm);
}

}  // namespace

void min_l2_search_mixed(const MinL2Args& a) {
  const int64_t D = a.D, KP = (D + 1) / 2, Q = a.Q;
  int64_t tile = (int64_t(512) * 1024 / (2 * D)) / kPanel * kPanel;
  tile = tile < kPanel ? kPanel : tile;
  uint32_t* packed = static_cast<uint32_t*>(std::aligned_alloc(64, size_t(tile * KP) * 4 + 64));
  uint32_t* qbf = static_cast<uint32_t*>(std::malloc(size_t(Q * KP) * 4));
  float* qnorm = static_cast<float*>(std::malloc(size_t(Q) * 4));
  float* bnorm = static_cast<float*>(std::malloc(size_t(a.N) * 4));
  float* best_upper = static_cast<float*>(std::malloc(size_t(Q) * 4));
  float* cand_lower = static_cast<float*>(std::malloc(size_t(Q * kCandidates) * 4));
  int64_t* cand_row = static_cast<int64_t*>(std::malloc(size_t(Q * kCandidates) * 8));
  int32_t* cand_n = static_cast<int32_t*>(std::malloc(size_t(Q) * 4));
  unsigned char* overflow = static_cast<unsigned char*>(std::malloc(size_t(Q)));
  if (!packed || !qbf || !qnorm || !bnorm || !best_upper || !cand_lower || !cand_row || !cand_n ||
      !overflow) {
    std::free(packed); std::free(qbf); std::free(qnorm); std::free(bnorm); std::free(best_upper);
    std::free(cand_lower); std::free(cand_row); std::free(cand_n); std::free(overflow);
    throw std::bad_alloc();
  }
  const float u = 1.0f / 256.0f;
  const float rel = 2.0f * (2.0f * u + u * u + 2.1f * float(D) / 16777216.0f);
  const float fin = 1.0f / 4194304.0f;  // 2^-22
  const int64_t qblocks = (Q + kMR - 1) / kMR;

#pragma omp parallel num_threads(a.num_threads)
  {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < Q; ++i) {
      const float* q = a.queries + i * D;
      qnorm[i] = std::sqrt(query_sq_norm(q, D));
      for (int64_t kp = 0; kp < KP; ++kp) {
        const uint16_t lo = float_to_bf16_rne(q[2 * kp]);
        const uint16_t hi = 2 * kp + 1 < D ? float_to_bf16_rne(q[2 * kp + 1]) : 0;
        qbf[i * KP + kp] = uint32_t(lo) | (uint32_t(hi) << 16);
      }
      best_upper[i] = std::numeric_limits<float>::infinity();
      cand_n[i] = 0;
      overflow[i] = 0;
    }
#pragma omp for schedule(static)
    for (int64_t n = 0; n < a.N; ++n) bnorm[n] = std::sqrt(a.bank_sq_norms[n]);

    for (int64_t n0 = 0; n0 < a.N; n0 += tile) {
      const int64_t rows = a.N - n0 < tile ? a.N - n0 : tile;
      const int64_t npanels = (rows + kPanel - 1) / kPanel;
#pragma omp for schedule(static)
      for (int64_t p = 0; p < npanels; ++p) {
        const int64_t r = rows - p * kPanel;
        pack_panel_bf16(a.bank, a.bank_type, n0 + p * kPanel, r < kPanel ? r : kPanel, D,
                        packed + p * kPanel * KP);
      }
#pragma omp for schedule(static)
      for (int64_t qb = 0; qb < qblocks; ++qb) {
        const int64_t q0 = qb * kMR;
        const int64_t mr = Q - q0 < kMR ? Q - q0 : kMR;
        for (int64_t p = 0; p < npanels; ++p) {
          const uint32_t* panel = packed + p * kPanel * KP;
          __m512 c0[kMR], c1[kMR];
          for (int64_t i = 0; i < kMR; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
          for (int64_t kp = 0; kp < KP; ++kp) {
            const __m512bh b0 = (__m512bh)_mm512_loadu_si512(panel + kp * kPanel);
            const __m512bh b1 = (__m512bh)_mm512_loadu_si512(panel + kp * kPanel + 16);
            for (int64_t i = 0; i < mr; ++i) {
              const __m512bh qi = (__m512bh)_mm512_set1_epi32(int(qbf[(q0 + i) * KP + kp]));
              c0[i] = _mm512_dpbf16_ps(c0[i], qi, b0);
              c1[i] = _mm512_dpbf16_ps(c1[i], qi, b1);
            }
          }
          const int64_t base = n0 + p * kPanel;
          const int64_t valid = a.N - base < kPanel ? a.N - base : kPanel;
          for (int64_t half = 0; half < 2; ++half) {
            const int64_t jb = base + 16 * half;
            const int64_t nv = valid - 16 * half;
            if (nv <= 0) break;
            const __mmask16 m = nv >= 16 ? __mmask16(0xffff) : __mmask16((1u << nv) - 1);
            const __m512 norm = _mm512_maskz_loadu_ps(m, a.bank_sq_norms + jb);
            const __m512 bn = _mm512_maskz_loadu_ps(m, bnorm + jb);
            for (int64_t i = 0; i < mr; ++i) {
              const int64_t qi = q0 + i;
              const __m512 acc = half ? c1[i] : c0[i];
              const __m512 s = _mm512_fmadd_ps(_mm512_set1_ps(-2.0f), acc, norm);
              const __m512 qbn = _mm512_mul_ps(_mm512_set1_ps(qnorm[qi]), bn);
              const __m512 delta = _mm512_add_ps(
                  _mm512_mul_ps(_mm512_set1_ps(rel), qbn),
                  _mm512_mul_ps(_mm512_set1_ps(fin),
                                _mm512_fmadd_ps(_mm512_set1_ps(2.0f), qbn, norm)));
              const __m512 delta_t = _mm512_add_ps(delta, _mm512_set1_ps(1e-30f));
              const __m512 lower = _mm512_sub_ps(s, delta_t);
              const __m512 upper = _mm512_add_ps(s, delta_t);
              const float up = _mm512_mask_reduce_min_ps(m, upper);
              if (up < best_upper[qi]) best_upper[qi] = up;
              __mmask16 keep = _mm512_mask_cmp_ps_mask(m, lower, _mm512_set1_ps(best_upper[qi]),
                                                       _CMP_LE_OQ);
              if (!keep) continue;
              alignas(64) float low[16];
              _mm512_store_ps(low, lower);
              while (keep) {
                const int j = __builtin_ctz(keep);
                keep &= keep - 1;
                int32_t& cn = cand_n[qi];
                if (cn == kCandidates) {  // drop entries the bound has ruled out since
                  int32_t w = 0;
                  for (int32_t e = 0; e < cn; ++e)
                    if (cand_lower[qi * kCandidates + e] <= best_upper[qi]) {
                      cand_lower[qi * kCandidates + w] = cand_lower[qi * kCandidates + e];
                      cand_row[qi * kCandidates + w] = cand_row[qi * kCandidates + e];
                      ++w;
                    }
                  cn = w;
                }
                if (cn == kCandidates) {
                  overflow[qi] = 1;
                  continue;
                }
                cand_lower[qi * kCandidates + cn] = low[j];
                cand_row[qi * kCandidates + cn] = jb + j;
                ++cn;
              }
            }
          }
        }
      }
    }
    // Re-rank the survivors with the exact fp32 chain (ascending rows: lowest index on ties).
#pragma omp for schedule(dynamic, 16)
    for (int64_t qi = 0; qi < Q; ++qi) {
      if (overflow[qi]) continue;
      const float* q = a.queries + qi * D;
      float bv = std::numeric_limits<float>::infinity();
      int64_t bi = -1;
      for (int32_t e = 0; e < cand_n[qi]; ++e) {
        if (cand_lower[qi * kCandidates + e] > best_upper[qi]) continue;
        const int64_t row = cand_row[qi * kCandidates + e];
        const float sc = exact_score(q, a.bank, a.bank_type, row, D, a.bank_sq_norms[row]);
        if (sc < bv || (sc == bv && row < bi)) {
          bv = sc;
          bi = row;
        }
      }
      const float d2 = query_sq_norm(q, D) + bv;
      a.dist[qi] = std::sqrt(d2 > 0.0f ? d2 : 0.0f);
      a.index[qi] = bi;
    }
  }
  // Queries whose survivor list overflowed: the exact search, one query at a time.
  for (int64_t qi = 0; qi < Q; ++qi) {
    if (!overflow[qi]) continue;
    MinL2Args one = a;
    one.queries = a.queries + qi * D;
    one.Q = 1;
    one.dist = a.dist + qi;
    one.index = a.index + qi;
    min_l2_search(one);
  }
  std::free(packed); std::free(qbf); std::free(qnorm); std::free(bnorm); std::free(best_upper);
  std::free(cand_lower); std::free(cand_row); std::free(cand_n); std::free(overflow);
}
#else
// Without AVX512-BF16 the screen has no fast path: the exact search is identical by definition.
void min_l2_search_mixed(const MinL2Args& a) { min_l2_search(a); }
#endif

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
