// Small vector primitives for the per-ISA kernels.
//
// This header is included by files compiled once per instruction set, so everything in it must
// have internal linkage (anonymous namespace): an inline function with external linkage would be
// merged by the linker across the copies and the AVX-512 body could end up on the generic path.
// The loops rely on `omp simd` so each ISA copy is vectorised to its own width.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifndef VSAD_ISA
#error "VSAD_ISA must name the instruction set this translation unit is compiled for"
#endif

namespace vsad {
namespace VSAD_ISA {
namespace {

// x[i] = exp(x[i]) for the softmax weights of one query (a few dozen values).
template <typename T>
inline void exp_inplace(T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

#if defined(__AVX512F__)
// float: 16 lanes at a time. exp(x) = 2^k e^r with k = round(x log2 e), r = x - k ln 2 (ln 2 split
// in two parts so r is exact to float precision), |r| <= ln2/2, e^r by its degree-7 Taylor
// polynomial (truncation < 2e-9 relative, below float rounding), 2^k applied with scalef (exact,
// and it underflows gracefully to 0 for very negative x). Within 2 ulp of std::exp; the scalar
// libm call per candidate was a fifth of the forward pass at small C.
inline __m512 exp_ps(__m512 x) {
  // Operand order matters: max/min return their second operand when either is NaN, so a NaN
  // logit stays NaN (as std::exp would give) instead of being clamped to a finite value.
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
  x = _mm512_min_ps(_mm512_set1_ps(88.7f), x);
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, k);
}

template <>
inline void exp_inplace<float>(float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(x + i, m, exp_ps(_mm512_maskz_loadu_ps(m, x + i)));
  }
}
#endif

template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Four dot products sharing the left operand: four independent FMA chains hide the FMA latency
// and `a` is loaded once.
template <typename T>
inline void dot4(const T* __restrict a, const T* __restrict b0, const T* __restrict b1,
                 const T* __restrict b2, const T* __restrict b3, int64_t n, T* __restrict out) {
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t i = 0; i < n; ++i) {
    const T x = a[i];
    s0 += x * b0[i];
    s1 += x * b1[i];
    s2 += x * b2[i];
    s3 += x * b3[i];
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  out[3] = s3;
}

// out[r] = <x, rows[r]> for r < count, four rows at a time.
template <typename T>
inline void dot_many(const T* __restrict x, const T* const* rows, int64_t count, int64_t n,
                     T* __restrict out) {
  int64_t r = 0;
  for (; r + 4 <= count; r += 4) dot4(x, rows[r], rows[r + 1], rows[r + 2], rows[r + 3], n, out + r);
  for (; r < count; ++r) out[r] = dot(x, rows[r], n);
}

#if defined(__AVX512F__)
// The eight horizontal sums of acc[0..7] as one 8-lane vector: a shared add/hadd tree (about 26
// instructions) instead of eight separate reductions (each a serial chain of shuffles and adds).
// For the short rows of small heads (d = 32: two FMAs per row) the reductions were the dot
// products' main cost.
inline __m256 reduce8(const __m512* acc) {
  __m256 h[8];
  for (int j = 0; j < 8; ++j)
    h[j] = _mm256_add_ps(_mm512_castps512_ps256(acc[j]),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[j]), 1)));
  // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7]
  const __m256 h01 = _mm256_hadd_ps(h[0], h[1]), h23 = _mm256_hadd_ps(h[2], h[3]);
  const __m256 h45 = _mm256_hadd_ps(h[4], h[5]), h67 = _mm256_hadd_ps(h[6], h[7]);
  // [s0 s1 s2 s3 | s0' s1' s2' s3'] where s = low-half partial sums, s' = high-half ones
  const __m256 q0 = _mm256_hadd_ps(h01, h23), q1 = _mm256_hadd_ps(h45, h67);
  // lanes 0-3: rows 0-3 (low 128 of q0 + high 128 of q0), lanes 4-7: rows 4-7 (same for q1)
  const __m256 lo = _mm256_permute2f128_ps(q0, q1, 0x20), hi = _mm256_permute2f128_ps(q0, q1, 0x31);
  return _mm256_add_ps(lo, hi);
}

// float: eight rows per pass over x (x loaded once per slice), masked tail instead of a scalar
// remainder loop. A short last block repeats its first row in the missing slots and stores only
// the real results, so every block runs the same fixed-size loop and the eight accumulators stay
// in registers (a run-time row count made the compiler spill them).
template <>
inline void dot_many<float>(const float* __restrict x, const float* const* rows, int64_t count,
                            int64_t n, float* __restrict out) {
  const int64_t tail = n % 16;
  const __mmask16 m = __mmask16((1u << tail) - 1);
  for (int64_t r0 = 0; r0 < count; r0 += 8) {
    const int64_t k = count - r0 < 8 ? count - r0 : 8;
    const float* row[8];
    for (int j = 0; j < 8; ++j) row[j] = rows[r0 + (j < k ? j : 0)];
    __m512 acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m512 xv = _mm512_loadu_ps(x + i);
      for (int j = 0; j < 8; ++j) acc[j] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(row[j] + i), acc[j]);
    }
    if (tail) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + i);
      for (int j = 0; j < 8; ++j)
        acc[j] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m, row[j] + i), acc[j]);
    }
    _mm256_mask_storeu_ps(out + r0, __mmask8((1u << k) - 1), reduce8(acc));
  }
}
#endif

// y += c[0] x0 + c[1] x1 + c[2] x2 + c[3] x3: one load and store of y for four rows.
template <typename T>
inline void axpy4(T* __restrict y, const T* c, const T* __restrict x0, const T* __restrict x1,
                  const T* __restrict x2, const T* __restrict x3, int64_t n) {
  const T c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += c0 * x0[i] + c1 * x1[i] + c2 * x2[i] + c3 * x3[i];
}

// y += sum_r coef[r] * rows[r]
template <typename T>
inline void axpy_many(T* __restrict y, const T* coef, const T* const* rows, int64_t count,
                      int64_t n) {
  int64_t r = 0;
  for (; r + 4 <= count; r += 4) axpy4(y, coef + r, rows[r], rows[r + 1], rows[r + 2], rows[r + 3], n);
  for (; r < count; ++r) {
    const T c = coef[r];
    const T* __restrict x = rows[r];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] += c * x[i];
  }
}

#if defined(__AVX512F__)
// y[16 S lanes] += sum_r coef[r] rows[r]: S 16-lane slices of y live in registers across all rows,
// and each slice has P partial sums over alternating rows. One chain per slice would be a serial
// FMA dependency (4-cycle latency per row); S*P = 8 chains keep both FMA ports busy.
template <int S, int P>
inline void axpy_block(float* __restrict y, const float* coef, const float* const* rows,
                       int64_t count, int64_t off) {
  __m512 acc[S][P];
  for (int s = 0; s < S; ++s) {
    acc[s][0] = _mm512_loadu_ps(y + off + 16 * s);
    for (int p = 1; p < P; ++p) acc[s][p] = _mm512_setzero_ps();
  }
  int64_t r = 0;
  for (; r + P <= count; r += P)
    for (int p = 0; p < P; ++p) {
      const __m512 c = _mm512_set1_ps(coef[r + p]);
      const float* x = rows[r + p] + off;
      for (int s = 0; s < S; ++s) acc[s][p] = _mm512_fmadd_ps(c, _mm512_loadu_ps(x + 16 * s), acc[s][p]);
    }
  for (; r < count; ++r) {
    const __m512 c = _mm512_set1_ps(coef[r]);
    for (int s = 0; s < S; ++s)
      acc[s][0] = _mm512_fmadd_ps(c, _mm512_loadu_ps(rows[r] + off + 16 * s), acc[s][0]);
  }
  for (int s = 0; s < S; ++s) {
    __m512 t = acc[s][0];
    for (int p = 1; p < P; ++p) t = _mm512_add_ps(t, acc[s][p]);
    _mm512_storeu_ps(y + off + 16 * s, t);
  }
}

template <>
inline void axpy_many<float>(float* __restrict y, const float* coef, const float* const* rows,
                             int64_t count, int64_t n) {
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) axpy_block<4, 2>(y, coef, rows, count, i);
  if (i + 32 <= n) {
    axpy_block<2, 4>(y, coef, rows, count, i);
    i += 32;
  }
  if (i + 16 <= n) {
    axpy_block<1, 8>(y, coef, rows, count, i);
    i += 16;
  }
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1);
    __m512 acc = _mm512_maskz_loadu_ps(m, y + i);
    for (int64_t r = 0; r < count; ++r)
      acc = _mm512_fmadd_ps(_mm512_set1_ps(coef[r]), _mm512_maskz_loadu_ps(m, rows[r] + i), acc);
    _mm512_mask_storeu_ps(y + i, m, acc);
  }
}
#endif

// y += alpha * x
template <typename T>
inline void axpy(T* __restrict y, T alpha, const T* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

template <typename T>
inline void zero(T* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = T(0);
}

// y = alpha * x
template <typename T>
inline void scale_to(T* __restrict y, T alpha, const T* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = alpha * x[i];
}

}  // namespace
}  // namespace VSAD_ISA
}  // namespace vsad
