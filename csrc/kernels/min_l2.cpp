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
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "min_l2.h"
#include "scratch.h"

namespace vsad {
namespace VSAD_ISA {
namespace {

// The buffers of one call, allocated together before its parallel region (an exception must
// not leave an OpenMP region) and freed together on return. A fixed array, not a std container:
// see DEVELOPERS.md on per-ISA code.
class Buffers {
 public:
  explicit Buffers(const char* what) : what_(what) {}
  ~Buffers() {
    for (int i = 0; i < n_; ++i) scratch_free(p_[i]);
  }
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;
  template <typename T>
  T* get(int64_t count) {
    const size_t bytes = sizeof(T) * size_t(count > 1 ? count : 1);
    bytes_ += bytes;
    void* p = n_ < kMax ? scratch_alloc(bytes) : nullptr;
    if (p == nullptr) failed_ = true;
    if (n_ < kMax) p_[n_++] = p;
    return static_cast<T*>(p);
  }
  // Throws (a MemoryError in Python) if any get() failed; call before the parallel region.
  void check() const {
    if (failed_) throw_scratch_failure(what_, bytes_);
  }

 private:
  static constexpr int kMax = 16;
  void* p_[kMax] = {};
  int n_ = 0;
  size_t bytes_ = 0;
  bool failed_ = false;
  const char* what_;
};

}  // namespace

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
  Buffers buffers("min_l2");
  float* packed = buffers.get<float>(tile * D + 16);
  float* best = buffers.get<float>(a.Q);
  buffers.check();
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
  Buffers buffers("min_l2 (mixed precision)");
  uint32_t* packed = buffers.get<uint32_t>(tile * KP + 16);
  uint32_t* qbf = buffers.get<uint32_t>(Q * KP);
  float* qnorm = buffers.get<float>(Q);
  float* bnorm = buffers.get<float>(a.N);
  float* best_upper = buffers.get<float>(Q);
  float* cand_lower = buffers.get<float>(Q * kCandidates);
  int64_t* cand_row = buffers.get<int64_t>(Q * kCandidates);
  int32_t* cand_n = buffers.get<int32_t>(Q);
  unsigned char* overflow = buffers.get<unsigned char>(Q);
  buffers.check();
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
}
#else
// Without AVX512-BF16 the screen has no fast path: the exact search is identical by definition.
void min_l2_search_mixed(const MinL2Args& a) { min_l2_search(a); }
#endif

// ---------------------------------------------------------------------------------------------
// Position-local search.
//
// Bank position p' is compared with every query pixel whose window contains it, so its S rows
// are read from memory once per call and reused from cache by up to (2ρ+1)²·B queries. The dot
// products put bank samples in SIMD lanes: for 8 samples at a time, each <q, b> is one
// sequential FMA chain over k = 0..D-1 in one lane (a broadcast q[k] times the 8 samples' b[k]),
// so there are no horizontal sums, a pair scores the same bits as in min_l2_search (a window
// covering the whole map returns exactly the global result), and an exact match scores exactly
// -||q||^2, i.e. distance 0. ||b||^2 comes from bank_sq_norms, padding lanes get +inf.
//
// AVX-512 path: the 8 samples' rows are transposed to k-major in registers, 8 k at a time
// (8 x 8 blocks of 256-bit vectors), the next block's loads and shuffles overlapping the
// current block's FMAs (shuffles run on other pipes than FMAs). Nothing is packed to memory:
// on AMD Zen 4 vector stores compete with FMAs, and packing a k-major panel per position cost
// a third of the time. 256-bit rather than 512-bit vectors: the 8 rows of a block then fit the
// 8 ways of an L1 set (rows H·W·D apart map to the same set), 512-bit FMAs are no faster on
// cores that split them, and S = 40 needs no padding. The portable path (generic and AVX2
// builds) copies 8 rows k-major into a small buffer and lets the compiler vectorise.
namespace {

constexpr int64_t kSamples = 8;  // bank samples per SIMD vector (8 fp32 lanes)

int64_t padded_samples(int64_t S) { return (S + kSamples - 1) / kSamples * kSamples; }

// One thread's running minimum per query: score ||b||^2 - 2<q, b> and flat bank row.
struct RunningBest {
  float* score;
  int64_t* index;
};

// The (score, flat row) order of the search: lower score, then lower row. Applying it pair by
// pair in any order leaves the same winner, so positions, sample blocks and threads may be
// visited in any order.
inline void offer(RunningBest best, int64_t query, float score, int64_t flat) {
  float& bs = best.score[query];
  int64_t& bi = best.index[query];
  if (score < bs || (score == bs && flat < bi)) {
    bs = score;
    bi = flat;
  }
}

// The query pixels (all B images) whose window contains bank position pp, as row pointers and
// flat query indices; returns how many.
int64_t window_queries(const MinL2LocalArgs& a, int64_t pp, const float** qrows, int64_t* qidx) {
  const int64_t HW = a.H * a.W, rho = a.radius, yb = pp / a.W, xb = pp % a.W;
  int64_t nq = 0;
  for (int64_t y = yb - rho; y <= yb + rho; ++y) {
    if (y < 0 || y >= a.H) continue;
    for (int64_t x = xb - rho; x <= xb + rho; ++x) {
      if (x < 0 || x >= a.W) continue;
      for (int64_t b = 0; b < a.B; ++b) {
        qidx[nq] = b * HW + y * a.W + x;
        qrows[nq] = a.queries + qidx[nq] * a.D;
        ++nq;
      }
    }
  }
  return nq;
}

// norms[pp·S_pad + s] = ||bank[s, pp]||^2 for s < S and positions [begin, end), +inf for
// padding lanes: a padding lane scores +inf - 2·0 = +inf, which never beats a real row (lower
// rows win ties). Position-major, so a position's norms are one contiguous vector load instead
// of S strided ones. Transposed in tiles of 64 positions: contiguous reads, and the tile's
// writes stay in L1.
void position_major_norms(const MinL2LocalArgs& a, int64_t S_pad, int64_t begin, int64_t end,
                          float* norms) {
  const int64_t HW = a.H * a.W, tile = 64;
  for (int64_t p0 = begin; p0 < end; p0 += tile) {
    const int64_t p1 = p0 + tile < end ? p0 + tile : end;
    for (int64_t s = 0; s < S_pad; ++s) {
      const float* src = a.bank_sq_norms + s * HW;
      for (int64_t pp = p0; pp < p1; ++pp)
        norms[pp * S_pad + s] = s < a.S ? src[pp] : std::numeric_limits<float>::infinity();
    }
  }
}

// ||q||^2 of up to 8 queries: the same sequential chain as query_sq_norm, eight interleaved so
// the FMA latency is hidden.
void query_sq_norms_8(const float* queries, int64_t first, int64_t count, int64_t D, float* out) {
  const float* q[8];
  for (int64_t i = 0; i < 8; ++i) q[i] = queries + (first + (i < count ? i : 0)) * D;
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t k = 0; k < D; ++k)
    for (int64_t i = 0; i < 8; ++i) s[i] = madd(q[i][k], q[i][k], s[i]);
  for (int64_t i = 0; i < count; ++i) out[i] = s[i];
}

// One block of work: the window queries q[0..mq) against samples s0..s0+7 of position pp.
struct SampleBlock {
  const float* const* q;  // query rows
  const int64_t* qidx;    // their flat query indices
  int64_t mq;
  int64_t s0, rows;       // first sample, real samples in the block (1..8)
  const float* norms;     // the block's 8 padded ||b||^2
  int64_t pp;
  RunningBest best;
};

// The portable path (generic and AVX2 builds): up to 8 queries x 8 samples, scores formed in a
// vectorisable loop and searched lane by lane only when their minimum can change the best.
void score_block_portable(const MinL2LocalArgs& a, const SampleBlock& c, float* rowbuf) {
  const int64_t D = a.D, HW = a.H * a.W;
  // rowbuf[k][j] = bank[s0 + j, pp][k] (zeros for padding lanes): k-major, 8 lanes.
  for (int64_t j = 0; j < kSamples; ++j)
    for (int64_t k = 0; k < D; ++k)
      rowbuf[k * kSamples + j] =
          j < c.rows ? bank_value(a.bank, a.bank_type, ((c.s0 + j) * HW + c.pp) * D + k) : 0.0f;
  for (int64_t q0 = 0; q0 < c.mq; q0 += 8) {
    const int64_t mq = c.mq - q0 < 8 ? c.mq - q0 : 8;
    const float* q[8];
    for (int64_t i = 0; i < 8; ++i) q[i] = c.q[q0 + (i < mq ? i : 0)];
    float acc[8][kSamples];
    for (int64_t i = 0; i < 8; ++i)
      for (int64_t j = 0; j < kSamples; ++j) acc[i][j] = 0.0f;
    for (int64_t k = 0; k < D; ++k) {
      const float* b = rowbuf + k * kSamples;
      for (int64_t i = 0; i < 8; ++i) {
        const float qk = q[i][k];
#pragma omp simd
        for (int64_t j = 0; j < kSamples; ++j) acc[i][j] = madd(qk, b[j], acc[i][j]);
      }
    }
    for (int64_t i = 0; i < mq; ++i) {
      const int64_t query = c.qidx[q0 + i];
      float sc[kSamples];
      float lo = std::numeric_limits<float>::infinity();
#pragma omp simd reduction(min : lo)
      for (int64_t j = 0; j < kSamples; ++j) {
        sc[j] = madd(-2.0f, acc[i][j], c.norms[j]);
        lo = sc[j] < lo ? sc[j] : lo;
      }
      if (!(lo <= c.best.score[query])) continue;  // nothing here can win or tie
      for (int64_t j = 0; j < c.rows; ++j) offer(c.best, query, sc[j], (c.s0 + j) * HW + c.pp);
    }
  }
}

#if defined(__AVX512F__)
// Elements k0..k0+7 of one bank row as fp32 (only those in mask m when Masked, zeros elsewhere).
// Masked loads cost ~15% of the kernel on Zen 4, so only the last k block uses them.
template <BankType T, bool Masked, typename Elem>
__attribute__((always_inline)) inline __m256 load_row_chunk(const Elem* src, __mmask8 m) {
  if constexpr (T == BankType::f16) {
    return _mm256_cvtph_ps(Masked ? _mm_maskz_loadu_epi16(m, src)
                                  : _mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  } else if constexpr (T == BankType::bf16) {  // bf16 is the top half of an fp32
    const __m128i h = Masked ? _mm_maskz_loadu_epi16(m, src)
                             : _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return Masked ? _mm256_maskz_loadu_ps(m, src) : _mm256_loadu_ps(src);
  }
}

// r[j] = elements k0..k0+7 of row j of the sample block starting at `first` (rows
// `row_stride` elements apart). Padding rows (j >= rows) repeat the last real row: their lanes
// score +inf through the padded norms whatever their dot. The last k block (Tail) masks
// elements past D, which may lie past the end of the bank. (The row pointer advances by a
// running sum rather than j·row_stride: the compiler would vectorise the latter into 64-bit
// vector multiplies and lane extracts.)
template <BankType T, bool Tail, typename Elem>
__attribute__((always_inline)) inline void load_block_rows(const Elem* first, int64_t row_stride,
                                                           int64_t rows, int64_t k0, int64_t D,
                                                           __m256* r) {
  const int64_t kn = D - k0 < kSamples ? D - k0 : kSamples;
  const __mmask8 m = __mmask8((1u << kn) - 1);
  const Elem* p = first + k0;
  r[0] = load_row_chunk<T, Tail>(p, m);
  for (int j = 1; j < 8; ++j) {
    p += j < rows ? row_stride : 0;
    r[j] = load_row_chunk<T, Tail>(p, m);
  }
}

// In-register transpose of an 8 x 8 block: out[k][j] = in[j][k].
__attribute__((always_inline)) inline void transpose_8x8(const __m256* in, __m256* out) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: (r0[0] r1[0] r0[1] r1[1]), (r0[2] ...)
    t[2 * i] = _mm256_unpacklo_ps(in[2 * i], in[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(in[2 * i], in[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {  // u[4i + c], 128-bit lane L: rows 4i..4i+3 of column 4L + c
    const __m256d a0 = _mm256_castps_pd(t[4 * i]), a1 = _mm256_castps_pd(t[4 * i + 1]);
    const __m256d a2 = _mm256_castps_pd(t[4 * i + 2]), a3 = _mm256_castps_pd(t[4 * i + 3]);
    u[4 * i] = _mm256_castpd_ps(_mm256_unpacklo_pd(a0, a2));
    u[4 * i + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a0, a2));
    u[4 * i + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(a1, a3));
    u[4 * i + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(a1, a3));
  }
  for (int c = 0; c < 4; ++c) {  // rows 0..3 from u[c], rows 4..7 from u[4 + c]
    out[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);      // column c
    out[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);  // column 4 + c
  }
}

// The lowest-index lane among those scoring the minimum of sc, offered to the running best.
// Rare: only when some lane can beat or tie the query's best so far. Inline and without a
// call: a call would make the compiler spill every live accumulator on the common path.
__attribute__((always_inline)) inline void offer_lane_minimum(__m256 sc, int64_t query,
                                                              int64_t s0, int64_t HW,
                                                              int64_t pp, RunningBest best) {
  __m256 lo = _mm256_min_ps(sc, _mm256_permute2f128_ps(sc, sc, 1));
  lo = _mm256_min_ps(lo, _mm256_shuffle_ps(lo, lo, 0x4e));
  lo = _mm256_min_ps(lo, _mm256_shuffle_ps(lo, lo, 0xb1));
  const float m = _mm256_cvtss_f32(lo);
  const int lane = __builtin_ctz(_mm256_cmp_ps_mask(sc, _mm256_set1_ps(m), _CMP_EQ_OQ));
  offer(best, query, m, (s0 + lane) * HW + pp);
}

// acc[i] += q[i][k0 + kk] · bk[kk] for kk < count (<= 8): one FMA chain step per query and k.
template <int MR>
__attribute__((always_inline)) inline void fma_k_block(const float* const* q, int64_t k0,
                                                       const __m256* bk, int64_t count,
                                                       __m256* acc) {
#pragma GCC unroll 8
  for (int kk = 0; kk < 8; ++kk) {
    if (kk >= count) break;
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
      acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(q[i][k0 + kk]), bk[kk], acc[i]);
  }
}

// The scores ||b||^2 - 2<q, b> of up to MR queries (c.mq) against the block's 8 samples, and
// the running-best update: one compare per query decides whether any lane can beat or tie the
// best so far.
template <int MR>
__attribute__((always_inline)) inline void update_best(const SampleBlock& c, const __m256* acc,
                                                       int64_t HW) {
  const __m256 minus2 = _mm256_set1_ps(-2.0f), norms = _mm256_loadu_ps(c.norms);
#pragma GCC unroll 16  // acc[i] must stay in registers: every index a constant
  for (int i = 0; i < MR; ++i) {
    const __m256 sc = _mm256_fmadd_ps(minus2, acc[i], norms);
    if (i < c.mq &&
        _mm256_cmp_ps_mask(sc, _mm256_set1_ps(c.best.score[c.qidx[i]]), _CMP_LE_OQ))
      offer_lane_minimum(sc, c.qidx[i], c.s0, HW, c.pp, c.best);
  }
}

// MR queries x 8 samples (used when D is not a multiple of 8): MR independent FMA chains over
// k in 256-bit lanes, fed 8 k at a time from an in-register transpose of the 8 rows; the next
// 8 k are loaded before the current FMAs and transposed after them, so that loads and shuffles
// overlap the FMAs. The arrays stay in registers only without branches around their updates,
// hence the separate first and last blocks. Needs D >= 8.
template <BankType T, int MR>
void score_block_avx512(const MinL2LocalArgs& a, const SampleBlock& c) {
  using Elem = typename std::conditional<T == BankType::f32, float, uint16_t>::type;
  const int64_t D = a.D, HW = a.H * a.W, row_stride = HW * D;  // bank[s + 1, pp] - bank[s, pp]
  const Elem* first = static_cast<const Elem*>(a.bank) + (c.s0 * HW + c.pp) * D;
  const float* q[MR];
  for (int i = 0; i < MR; ++i) q[i] = c.q[i];
  __m256 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  __m256 raw[8], bk[8];  // the next 8 k as loaded; the current 8 k, k-major
  load_block_rows<T, false>(first, row_stride, c.rows, 0, D, raw);
  transpose_8x8(raw, bk);
  int64_t k0 = 0;
  for (; k0 + 2 * kSamples <= D; k0 += kSamples) {
    load_block_rows<T, false>(first, row_stride, c.rows, k0 + kSamples, D, raw);
    fma_k_block<MR>(q, k0, bk, kSamples, acc);
    transpose_8x8(raw, bk);
  }
  const int64_t tail = D - k0 - kSamples;  // 0..7 k after the current block
  if (tail > 0) load_block_rows<T, true>(first, row_stride, c.rows, k0 + kSamples, D, raw);
  fma_k_block<MR>(q, k0, bk, kSamples, acc);
  if (tail > 0) {
    transpose_8x8(raw, bk);
    fma_k_block<MR>(q, k0 + kSamples, bk, tail, acc);
  }
  update_best<MR>(c, acc, HW);
}

// The whole of position pp in one loop, when D is a multiple of 8 (the common case): the work
// is a sequence of (sample block, query group) pairs, each D/8 blocks of 8 k, and the rows of
// the next 8 k are loaded (and transposed after the current FMAs) even across pairs, so no
// pair starts by waiting for its first loads and shuffles. This removed a fixed cost per pair
// that was a third of the time at D = 32. All groups have MR queries: the last one repeats its
// last query, and the repeats' scores are not offered.
template <BankType T, int MR>
void score_position_pipelined(const MinL2LocalArgs& a, const SampleBlock& w) {
  using Elem = typename std::conditional<T == BankType::f32, float, uint16_t>::type;
  const int64_t D = a.D, HW = a.H * a.W, row_stride = HW * D;  // bank[s + 1, pp] - bank[s, pp]
  const Elem* bank_pp = static_cast<const Elem*>(a.bank) + w.pp * D;
  const int64_t nq = w.mq, groups = (nq + MR - 1) / MR;
  const int64_t pairs = (a.S + kSamples - 1) / kSamples * groups, chunks = D / kSamples;
  // Where item (pair, chunk) reads: block b = pair / groups, rows 8b..8b+7, k = 8·chunk.
  auto block_rows = [&](int64_t pair) {
    const int64_t s0 = pair / groups * kSamples;
    return a.S - s0 < kSamples ? a.S - s0 : kSamples;
  };
  auto block_first = [&](int64_t pair) {
    return bank_pp + pair / groups * kSamples * row_stride;
  };
  __m256 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  __m256 raw[8], bk[8];
  load_block_rows<T, false>(block_first(0), row_stride, block_rows(0), 0, D, raw);
  transpose_8x8(raw, bk);
  SampleBlock c = w;
  for (int64_t pair = 0; pair < pairs; ++pair) {
    const int64_t g = pair % groups, q0 = g * MR;
    const float* q[MR];
    for (int i = 0; i < MR; ++i) q[i] = w.q[q0 + i < nq ? q0 + i : nq - 1];
    const Elem* first = block_first(pair);
    const int64_t rows = block_rows(pair);
    // the pair after this one (or this one again after the last: a harmless extra load)
    const int64_t next = pair + 1 < pairs ? pair + 1 : pair;
    const Elem* next_first = block_first(next);
    const int64_t next_rows = block_rows(next);
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const bool last = ch + 1 == chunks;
      load_block_rows<T, false>(last ? next_first : first, row_stride, last ? next_rows : rows,
                                last ? 0 : (ch + 1) * kSamples, D, raw);
      fma_k_block<MR>(q, ch * kSamples, bk, kSamples, acc);
      transpose_8x8(raw, bk);
    }
    c.s0 = pair / groups * kSamples;
    c.rows = rows;
    c.norms = w.norms + c.s0;
    c.qidx = w.qidx + q0;
    c.mq = nq - q0 < MR ? nq - q0 : MR;
    update_best<MR>(c, acc, HW);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  }
}

// Most queries per register block: MR accumulators + 8 current + 8 next rows + temporaries
// within the 32 vector registers (9 to 13 measured the same; 12 spills fewer query pointers).
constexpr int64_t kMaxQueries = 12;

// Calls f(std::integral_constant<int, K>) with K = min(n, kMaxQueries), n >= 1: the query
// count becomes a compile-time constant so the accumulators live in registers.
template <int K = 1, typename F>
inline void with_query_count(int64_t n, F&& f) {
  if constexpr (K == kMaxQueries) {
    f(std::integral_constant<int, K>{});
  } else {
    if (n <= K) f(std::integral_constant<int, K>{});
    else with_query_count<K + 1>(n, f);
  }
}

template <BankType T>
void score_block_dispatch(const MinL2LocalArgs& a, const SampleBlock& c) {
  with_query_count(c.mq, [&](auto mq) { score_block_avx512<T, decltype(mq)::value>(a, c); });
}

// Queries split evenly into groups of at most kMaxQueries: 25 -> 3 x 9, 100 -> 9 x 12.
template <BankType T>
void score_position_pipelined_dispatch(const MinL2LocalArgs& a, const SampleBlock& w) {
  const int64_t groups = (w.mq + kMaxQueries - 1) / kMaxQueries;
  with_query_count((w.mq + groups - 1) / groups,
                   [&](auto mq) { score_position_pipelined<T, decltype(mq)::value>(a, w); });
}
#endif

// Every window query of bank position pp against every sample, 8 samples at a time; on the
// AVX-512 path the queries are split into equal groups of at most kMaxQueries.
void score_position(const MinL2LocalArgs& a, int64_t pp, const float* position_norms,
                    const float* const* qrows, const int64_t* qidx, int64_t nq,
                    RunningBest best, float* rowbuf) {
  SampleBlock c{qrows, qidx, nq, 0, 0, nullptr, pp, best};
#if defined(__AVX512F__)
  if (a.D % kSamples == 0) {  // the common case: one pipelined loop for the whole position
    c.norms = position_norms;
    switch (a.bank_type) {
      case BankType::f16: score_position_pipelined_dispatch<BankType::f16>(a, c); break;
      case BankType::bf16: score_position_pipelined_dispatch<BankType::bf16>(a, c); break;
      default: score_position_pipelined_dispatch<BankType::f32>(a, c); break;
    }
    return;
  }
#endif
  for (int64_t s0 = 0; s0 < a.S; s0 += kSamples) {
    c.s0 = s0;
    c.rows = a.S - s0 < kSamples ? a.S - s0 : kSamples;
    c.norms = position_norms + s0;
#if defined(__AVX512F__)
    if (a.D < kSamples) {  // too short for the 8 x 8 transposes
      score_block_portable(a, c, rowbuf);
      continue;
    }
    const int64_t groups = (nq + kMaxQueries - 1) / kMaxQueries;
    for (int64_t g = 0, q0 = 0; g < groups; ++g) {
      c.mq = (nq - q0) / (groups - g) + ((nq - q0) % (groups - g) != 0);
      c.q = qrows + q0;
      c.qidx = qidx + q0;
      switch (a.bank_type) {
        case BankType::f16: score_block_dispatch<BankType::f16>(a, c); break;
        case BankType::bf16: score_block_dispatch<BankType::bf16>(a, c); break;
        default: score_block_dispatch<BankType::f32>(a, c); break;
      }
      q0 += c.mq;
    }
#else
    score_block_portable(a, c, rowbuf);
#endif
  }
}

// Hints the S rows of bank position pp into cache while the previous position is computed:
// the rows lie H·W·D elements apart, too many streams for the hardware prefetcher to follow.
void prefetch_position(const MinL2LocalArgs& a, int64_t pp) {
  const int64_t HW = a.H * a.W;
  const int64_t esize = a.bank_type == BankType::f32 ? 4 : 2;
  const char* base = static_cast<const char*>(a.bank);
  for (int64_t s = 0; s < a.S; ++s) {
    const char* row = base + (s * HW + pp) * a.D * esize;
    for (int64_t off = 0; off < a.D * esize; off += 64) __builtin_prefetch(row + off, 0, 2);
  }
}

}  // namespace

void min_l2_local_search(const MinL2LocalArgs& a) {
  const int64_t D = a.D, HW = a.H * a.W, Qn = a.B * HW, rho = a.radius;
  const int64_t win = (2 * rho + 1) * (2 * rho + 1) * a.B;
  const int64_t S_pad = padded_samples(a.S);
  const int nt = a.num_threads;
  // Shared: the position-major padded norms (H·W·S_pad floats) and ||q||^2 of every query. Per
  // thread: the window's query rows, the portable path's k-major copy of 8 rows (D x 8
  // floats), and the running minima of all queries. Everything is allocated up front: nothing
  // can fail inside the parallel region.
  Buffers buffers("min_l2_local");
  float* norms = buffers.get<float>(HW * S_pad);
  float* qnorms = buffers.get<float>(Qn);
  float* rowbufs = buffers.get<float>(int64_t(nt) * D * kSamples);
  const float** qrows_all = buffers.get<const float*>(int64_t(nt) * win);
  int64_t* qidx_all = buffers.get<int64_t>(int64_t(nt) * win);
  float* best_all = buffers.get<float>(int64_t(nt) * Qn);
  int64_t* idx_all = buffers.get<int64_t>(int64_t(nt) * Qn);
  buffers.check();
  // One parallel region without inner barriers (each costs a wake-up when OpenMP threads wait
  // passively): threads take runs of kPositionRun consecutive positions, guided (large runs
  // first for locality, then small ones: a core busy with another process delays the call
  // far less than with a static split), prepare those positions' norms, and compute a share
  // of ||q||^2; the merge follows the join.
  constexpr int64_t kPositionRun = 64;
  const int64_t runs = (HW + kPositionRun - 1) / kPositionRun;
  int used_threads = 1;
#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num(), team = omp_get_num_threads();
    if (tid == 0) used_threads = team;
    const RunningBest best{best_all + int64_t(tid) * Qn, idx_all + int64_t(tid) * Qn};
    for (int64_t e = 0; e < Qn; ++e) {
      best.score[e] = std::numeric_limits<float>::infinity();
      best.index[e] = -1;
    }
    // ||q||^2, eight queries at a time so that their chains overlap
    const int64_t blocks = (Qn + 7) / 8, per_block = (blocks + team - 1) / team;
    for (int64_t blk = tid * per_block; blk < blocks && blk < (tid + 1) * per_block; ++blk)
      query_sq_norms_8(a.queries, blk * 8, Qn - blk * 8 < 8 ? Qn - blk * 8 : 8, D,
                       qnorms + blk * 8);
    float* rowbuf = rowbufs + int64_t(tid) * D * kSamples;
    const float** qrows = qrows_all + int64_t(tid) * win;
    int64_t* qidx = qidx_all + int64_t(tid) * win;
#pragma omp for schedule(guided) nowait
    for (int64_t run = 0; run < runs; ++run) {
      const int64_t begin = run * kPositionRun;
      const int64_t end = begin + kPositionRun < HW ? begin + kPositionRun : HW;
      position_major_norms(a, S_pad, begin, end, norms);
      for (int64_t pp = begin; pp < end; ++pp) {
        if (pp + 1 < end) prefetch_position(a, pp + 1);
        const int64_t nq = window_queries(a, pp, qrows, qidx);
        score_position(a, pp, norms + pp * S_pad, qrows, qidx, nq, best, rowbuf);
      }
    }
  }
  // Merge the per-thread minima (lowest index on ties).
  for (int64_t qi = 0; qi < Qn; ++qi) {
    float bv = best_all[qi];
    int64_t bi = idx_all[qi];
    for (int t = 1; t < used_threads; ++t) {
      const float v = best_all[int64_t(t) * Qn + qi];
      const int64_t j = idx_all[int64_t(t) * Qn + qi];
      if (v < bv || (v == bv && j >= 0 && (bi < 0 || j < bi))) {
        bv = v;
        bi = j;
      }
    }
    const float d2 = qnorms[qi] + bv;
    a.dist[qi] = std::sqrt(d2 > 0.0f ? d2 : 0.0f);
    a.index[qi] = bi;
  }
}

}  // namespace VSAD_ISA
}  // namespace vsad
