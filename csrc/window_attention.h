// MVAM window attention (docs/design.md §3.1): homography-projected R x R window gather + attention.
#pragma once
#include <cstddef>
#include <cstdint>

#include "cpu_features.h"

namespace vsad {

// Plain-buffer view of one call. All tensors are C-contiguous.
//   q, k, v, out        (B, M, H, W, C)
//   pos_k, pos_v        (N, R*R, C)
//   homography          (hom_batch, M, N, 3, 3) float64, hom_batch in {1, B} (1 = shared)
//   neighbors           (M, N) int64, -1 = empty slot
//   lse                 (B, M, H, W, heads): log-sum-exp of the logits, -inf when no candidate
template <typename T>
struct WindowAttentionArgs {
  const T* q;
  const T* k;
  const T* v;
  const T* pos_k;
  const T* pos_v;
  const double* homography;
  const int64_t* neighbors;
  int64_t B, M, H, W, C, N, R, heads, hom_batch;
  double scale;
  int num_threads;
  // window_attention_scratch_bytes(...) bytes, 64-byte aligned, allocated by the caller before
  // the call (never inside the kernels' parallel regions): a few KiB per thread, plus for the
  // backward either per-thread dk/dv copies (only while they fit 8 MiB) or one chunk of
  // per-query scatter records (1 MiB) — bounded whatever the thread count or image size.
  void* scratch;
};

template <typename T>
struct WindowAttentionForward : WindowAttentionArgs<T> {
  T* out;
  T* lse;
};

template <typename T>
struct WindowAttentionBackward : WindowAttentionArgs<T> {
  const T* out;
  const T* lse;
  const T* grad_out;
  T* grad_q;
  T* grad_k;
  T* grad_v;
  T* grad_pos_k;
  T* grad_pos_v;
};

#define VSAD_DECLARE_WINDOW_ATTENTION(isa)                                             \
  namespace isa {                                                                      \
  void window_attention_forward(const WindowAttentionForward<float>& a);               \
  void window_attention_forward(const WindowAttentionForward<double>& a);              \
  void window_attention_backward(const WindowAttentionBackward<float>& a);             \
  void window_attention_backward(const WindowAttentionBackward<double>& a);            \
  void window_attention_scratch_bytes(const WindowAttentionArgs<float>& a, bool backward, \
                                      size_t* bytes);                                  \
  void window_attention_scratch_bytes(const WindowAttentionArgs<double>& a, bool backward, \
                                      size_t* bytes);                                  \
  }
VSAD_FOR_EACH_ISA(VSAD_DECLARE_WINDOW_ATTENTION)
#undef VSAD_DECLARE_WINDOW_ATTENTION

}  // namespace vsad
