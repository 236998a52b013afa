// Pieces shared by the memory-bank search kernels (exact, mixed precision, position-local).
//
// Included by files compiled once per instruction set: everything has internal linkage inside
// vsad::VSAD_ISA (see vec.h for why).
//
// The one rule all of them keep: the exact score of a pair is
//   score(q, b) = fma(-2, dot(q, b), ||b||^2),  dot = sequential FMA chain over k = 0..D-1
// computed in one SIMD lane (micro_kernel below), so any recomputation of a pair — in another
// tile, another thread, or the mixed-precision re-rank — reproduces it bit for bit.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include "min_l2.h"

#ifndef VSAD_ISA
#error "VSAD_ISA must name the instruction set this translation unit is compiled for"
#endif

namespace vsad {
namespace VSAD_ISA {
namespace {

constexpr int64_t kPanel = 32;  // bank rows per packed panel (two 16-lane vectors)
constexpr int64_t kMR = 12;     // queries per micro-kernel (24 accumulators + 2 loads + 1 bcast)

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

inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

inline float bank_value(const void* bank, BankType type, int64_t idx) {
  switch (type) {
    case BankType::f16: return half_to_float(static_cast<const uint16_t*>(bank)[idx]);
    case BankType::bf16: return bits_to_float(uint32_t(static_cast<const uint16_t*>(bank)[idx]) << 16);
    default: return static_cast<const float*>(bank)[idx];
  }
}

// One bank row as float32 (exact: float16 and bfloat16 widen without rounding).
inline void load_row(const void* bank, BankType type, int64_t row, int64_t D, float* __restrict out) {
  if (type == BankType::f32) {
    std::memcpy(out, static_cast<const float*>(bank) + row * D, size_t(D) * 4);
  } else if (type == BankType::bf16) {
    const uint16_t* src = static_cast<const uint16_t*>(bank) + row * D;
#pragma omp simd
    for (int64_t k = 0; k < D; ++k) out[k] = bits_to_float(uint32_t(src[k]) << 16);
  } else {
    const uint16_t* src = static_cast<const uint16_t*>(bank) + row * D;
    int64_t k = 0;
#if defined(__AVX512F__)
    for (; k + 16 <= D; k += 16)
      _mm512_storeu_ps(out + k, _mm512_cvtph_ps(_mm256_loadu_si256(
                                    reinterpret_cast<const __m256i*>(src + k))));
#elif defined(__F16C__)
    for (; k + 8 <= D; k += 8)
      _mm256_storeu_ps(out + k, _mm256_cvtph_ps(_mm_loadu_si128(
                                    reinterpret_cast<const __m128i*>(src + k))));
#endif
    for (; k < D; ++k) out[k] = half_to_float(src[k]);
  }
}

// Packs `count` bank rows rows[0..count) into a k-major panel: out[k*32 + j] = bank[rows[j]][k].
// Lanes j >= count are left as they are (callers never read their results). `row_buf` holds D
// floats.
inline void pack_panel_rows(const void* bank, BankType type, const int64_t* rows, int64_t count,
                            int64_t D, float* __restrict out, float* __restrict row_buf) {
  for (int64_t j = 0; j < count; ++j) {
    load_row(bank, type, rows[j], D, row_buf);
    for (int64_t k = 0; k < D; ++k) out[k * kPanel + j] = row_buf[k];
  }
}

// Packs rows n0 .. n0+count-1; lanes past `count` are zeroed.
inline void pack_panel(const void* bank, BankType type, int64_t n0, int64_t count, int64_t D,
                       float* __restrict out, float* __restrict row_buf) {
  for (int64_t j = 0; j < kPanel; ++j) {
    if (j < count) {
      load_row(bank, type, n0 + j, D, row_buf);
      for (int64_t k = 0; k < D; ++k) out[k * kPanel + j] = row_buf[k];
    } else {
      for (int64_t k = 0; k < D; ++k) out[k * kPanel + j] = 0.0f;
    }
  }
}

// acc[i][j] = <q_i, b_j> for `mr` <= kMR queries and the 32 rows of one packed panel, each a
// sequential FMA chain over k in its own lane.
inline void micro_kernel(const float* const* q, int64_t mr, const float* __restrict panel,
                         int64_t D, float (*acc)[kPanel]) {
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

// Folds a block of exact dots into the running minima: score = fma(-2, dot, ||b||^2), strict <
// so that the lowest index wins a tie (rows arrive in increasing index order per query).
// `norms` has 32 entries; lanes past the bank's end hold NaN, which never compares less.
inline void fold_scores(float (*acc)[kPanel], int64_t mr, const float* __restrict norms,
                        int64_t base, float* __restrict best, int64_t* __restrict index) {
#if defined(__AVX512F__)
  const __m512 minus2 = _mm512_set1_ps(-2.0f);
  const __m512 n0 = _mm512_loadu_ps(norms), n1 = _mm512_loadu_ps(norms + 16);
#endif
  for (int64_t i = 0; i < mr; ++i) {
    float s[kPanel];
    float bi = best[i];
#if defined(__AVX512F__)
    const __m512 s0 = _mm512_fmadd_ps(minus2, _mm512_loadu_ps(acc[i]), n0);
    const __m512 s1 = _mm512_fmadd_ps(minus2, _mm512_loadu_ps(acc[i] + 16), n1);
    const __m512 bv = _mm512_set1_ps(bi);
    if (!(_mm512_cmp_ps_mask(s0, bv, _CMP_LT_OQ) | _mm512_cmp_ps_mask(s1, bv, _CMP_LT_OQ)))
      continue;  // the common case once a good candidate is known
    _mm512_storeu_ps(s, s0);
    _mm512_storeu_ps(s + 16, s1);
#else
    // -2*dot is exact, so the unfused form rounds once, like the fused one.
    for (int64_t j = 0; j < kPanel; ++j) s[j] = madd(-2.0f, acc[i][j], norms[j]);
#endif
    int64_t ii = index[i];
    for (int64_t j = 0; j < kPanel; ++j)
      if (s[j] < bi) {
        bi = s[j];
        ii = base + j;
      }
    best[i] = bi;
    index[i] = ii;
  }
}

inline float query_sq_norm(const float* q, int64_t D) {
  float s = 0.0f;
  for (int64_t k = 0; k < D; ++k) s = madd(q[k], q[k], s);
  return s;
}

// dist from the best score: sqrt(max(||q||^2 + score, 0)).
inline float score_to_dist(float q_sq_norm, float score) {
  const float d2 = q_sq_norm + score;
  return std::sqrt(d2 > 0.0f ? d2 : 0.0f);
}

}  // namespace
}  // namespace VSAD_ISA
}  // namespace vsad
