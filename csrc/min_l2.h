// Memory-bank search (docs/design.md §3.2): for every query, the nearest bank row in L2 distance.
#pragma once
#include <cstdint>

#include "cpu_features.h"

namespace vsad {

enum class BankType { f32 = 0, f16 = 1, bf16 = 2 };

// queries (Q, D) float32; bank (N, D) of `bank_type`; bank_sq_norms (N,) float32 — computed by
// min_l2_bank_sq_norms with the same arithmetic the search uses. Outputs dist (Q,) float32 and
// index (Q,) int64. Ties go to the lowest index.
struct MinL2Args {
  const float* queries;
  const void* bank;
  BankType bank_type;
  const float* bank_sq_norms;
  int64_t Q, N, D;
  float* dist;
  int64_t* index;
  int num_threads;
};

// Position-local search: queries (B, H, W, D) float32, bank (S, H, W, D) of `bank_type`; the
// query at (b, y, x) is compared with bank[s, y', x'] for every s and |y'-y|, |x'-x| <= radius.
// index is the flat bank row s*H*W + y'*W + x' (lowest on ties).
struct MinL2LocalArgs {
  const float* queries;
  const void* bank;
  BankType bank_type;
  const float* bank_sq_norms;  // (S*H*W,)
  int64_t B, S, H, W, D, radius;
  float* dist;     // (B*H*W,)
  int64_t* index;  // (B*H*W,)
  int num_threads;
};

#define VSAD_DECLARE_MIN_L2(isa)                                                      \
  namespace isa {                                                                     \
  void min_l2_search(const MinL2Args& a);                                            \
  void min_l2_search_mixed(const MinL2Args& a);                                      \
  void min_l2_local_search(const MinL2LocalArgs& a);                                 \
  void min_l2_bank_sq_norms(const void* bank, BankType type, int64_t N, int64_t D,   \
                            float* out, int num_threads);                             \
  }
VSAD_FOR_EACH_ISA_BF16(VSAD_DECLARE_MIN_L2)
#undef VSAD_DECLARE_MIN_L2

}  // namespace vsad
