// Small vector primitives for the per-ISA kernels.
//
// This header is included by files compiled once per instruction set, so everything in it must
// have internal linkage (anonymous namespace): an inline function with external linkage would be
// merged by the linker across the copies and the AVX-512 body could end up on the generic path.
// The loops rely on `omp simd` so each ISA copy is vectorised to its own width.
#pragma once
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
// float: eight rows per pass over x (x loaded once per slice), masked tail instead of a scalar
// remainder loop, and in-register horizontal sums.
template <>
inline void dot_many<float>(const float* __restrict x, const float* const* rows, int64_t count,
                            int64_t n, float* __restrict out) {
  const int64_t tail = n % 16;
  const __mmask16 m = __mmask16((1u << tail) - 1);
  for (int64_t r0 = 0; r0 < count; r0 += 8) {
    const int64_t k = count - r0 < 8 ? count - r0 : 8;
    __m512 acc[8];
    for (int64_t j = 0; j < 8; ++j) acc[j] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m512 xv = _mm512_loadu_ps(x + i);
      for (int64_t j = 0; j < k; ++j)
        acc[j] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(rows[r0 + j] + i), acc[j]);
    }
    if (tail) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + i);
      for (int64_t j = 0; j < k; ++j)
        acc[j] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m, rows[r0 + j] + i), acc[j]);
    }
    for (int64_t j = 0; j < k; ++j) out[r0 + j] = _mm512_reduce_add_ps(acc[j]);
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
// float: keep 16-lane slices of y in a register across all rows, so y is loaded and stored once
// instead of once per four rows (the value accumulation is bound by these loads and stores).
template <>
inline void axpy_many<float>(float* __restrict y, const float* coef, const float* const* rows,
                             int64_t count, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 acc = _mm512_loadu_ps(y + i);
    for (int64_t r = 0; r < count; ++r)
      acc = _mm512_fmadd_ps(_mm512_set1_ps(coef[r]), _mm512_loadu_ps(rows[r] + i), acc);
    _mm512_storeu_ps(y + i, acc);
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
