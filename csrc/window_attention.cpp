// Python binding of the MVAM window attention: validates the plain-buffer arguments, borrows
// scratch memory (before the kernel's parallel region: a failure raises MemoryError in Python)
// and dispatches to the kernel compiled for the CPU's instruction set.
#include "window_attention.h"

#include <pybind11/pybind11.h>

#include <cmath>
#include <string>

#include "checks.h"
#include "scratch.h"

namespace py = pybind11;

namespace vsad {
namespace {

struct Shape {
  int64_t B, M, H, W, C, N, R, heads, hom_batch;
};

void validate(const Shape& s, uintptr_t homography, uintptr_t neighbors, double scale,
              int num_threads) {
  check_positive("B", s.B);
  check_positive("M", s.M);
  check_positive("H", s.H);
  check_positive("W", s.W);
  check_positive("C", s.C);
  check_positive("N (neighbour slots)", s.N);
  check_positive("window", s.R);
  check_positive("heads", s.heads);
  if (s.C % s.heads != 0) fail("heads: got ", s.heads, ", expected a divisor of C=", s.C);
  if (s.hom_batch != 1 && s.hom_batch != s.B)
    fail("homography: batch dimension ", s.hom_batch, ", expected 1 (shared) or B=", s.B);
  if (!std::isfinite(scale)) fail("scale: got ", scale, ", expected a finite number");
  if (num_threads < 1) fail("num_threads: got ", num_threads, ", expected >= 1");
  const int64_t* nbr = cptr<int64_t>(neighbors);
  for (int64_t e = 0; e < s.M * s.N; ++e)
    if (nbr[e] < -1 || nbr[e] >= s.M)
      fail("neighbors[", e / s.N, ", ", e % s.N, "]: got ", nbr[e], ", expected -1 or a view index in [0, ",
           s.M, ")");
  const double* hom = cptr<double>(homography);
  for (int64_t e = 0; e < s.hom_batch * s.M * s.N * 9; ++e)
    if (!std::isfinite(hom[e]))
      fail("homography: element ", e, " is ", hom[e], ", expected finite values");
}

template <typename T>
void fill_common(WindowAttentionArgs<T>& a, const Shape& s, uintptr_t q, uintptr_t k, uintptr_t v,
                 uintptr_t pos_k, uintptr_t pos_v, uintptr_t homography, uintptr_t neighbors,
                 double scale, int num_threads) {
  a.q = cptr<T>(q);
  a.k = cptr<T>(k);
  a.v = cptr<T>(v);
  a.pos_k = cptr<T>(pos_k);
  a.pos_v = cptr<T>(pos_v);
  a.homography = cptr<double>(homography);
  a.neighbors = cptr<int64_t>(neighbors);
  a.B = s.B, a.M = s.M, a.H = s.H, a.W = s.W, a.C = s.C, a.N = s.N, a.R = s.R, a.heads = s.heads;
  a.hom_batch = s.hom_batch;
  a.scale = scale;
  a.num_threads = num_threads;
}

template <typename T>
void forward(const Shape& s, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t pos_k,
             uintptr_t pos_v, uintptr_t homography, uintptr_t neighbors, uintptr_t out,
             uintptr_t lse, double scale, int num_threads) {
  WindowAttentionForward<T> a;
  fill_common(a, s, q, k, v, pos_k, pos_v, homography, neighbors, scale, num_threads);
  a.out = mptr<T>(out);
  a.lse = mptr<T>(lse);
  size_t bytes = 0;
  VSAD_DISPATCH(window_attention_scratch_bytes, a, false, &bytes);
  ScratchBlock scratch(bytes, "window_attention forward");
  a.scratch = scratch.data();
  VSAD_DISPATCH(window_attention_forward, a);
}

template <typename T>
void backward(const Shape& s, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t pos_k,
              uintptr_t pos_v, uintptr_t homography, uintptr_t neighbors, uintptr_t out,
              uintptr_t lse, uintptr_t grad_out, uintptr_t grad_q, uintptr_t grad_k,
              uintptr_t grad_v, uintptr_t grad_pos_k, uintptr_t grad_pos_v, double scale,
              int num_threads) {
  WindowAttentionBackward<T> a;
  fill_common(a, s, q, k, v, pos_k, pos_v, homography, neighbors, scale, num_threads);
  a.out = cptr<T>(out);
  a.lse = cptr<T>(lse);
  a.grad_out = cptr<T>(grad_out);
  a.grad_q = mptr<T>(grad_q);
  a.grad_k = mptr<T>(grad_k);
  a.grad_v = mptr<T>(grad_v);
  a.grad_pos_k = mptr<T>(grad_pos_k);
  a.grad_pos_v = mptr<T>(grad_pos_v);
  size_t bytes = 0;
  VSAD_DISPATCH(window_attention_scratch_bytes, a, true, &bytes);
  ScratchBlock scratch(bytes, "window_attention backward");
  a.scratch = scratch.data();
  VSAD_DISPATCH(window_attention_backward, a);
}

bool is_double(const std::string& dtype) {
  if (dtype == "float32") return false;
  if (dtype == "float64") return true;
  fail("dtype: got '", dtype, "', expected 'float32' or 'float64' (other dtypes are converted in Python)");
}

}  // namespace

void register_window_attention(py::module_& m) {
  m.def(
      "window_attention_forward",
      [](uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t pos_k, uintptr_t pos_v,
         uintptr_t homography, uintptr_t neighbors, uintptr_t out, uintptr_t lse,
         const std::string& dtype, int64_t B, int64_t M, int64_t H, int64_t W, int64_t C,
         int64_t N, int64_t window, int64_t heads, int64_t hom_batch, double scale,
         int num_threads) {
        for (auto [name, p] : {std::pair{"q", q}, {"k", k}, {"v", v}, {"pos_k", pos_k},
                               {"pos_v", pos_v}, {"homography", homography},
                               {"neighbors", neighbors}, {"out", out}, {"lse", lse}})
          check_pointer(name, p);
        const Shape s{B, M, H, W, C, N, window, heads, hom_batch};
        validate(s, homography, neighbors, scale, num_threads);
        py::gil_scoped_release release;
        if (is_double(dtype))
          forward<double>(s, q, k, v, pos_k, pos_v, homography, neighbors, out, lse, scale,
                          num_threads);
        else
          forward<float>(s, q, k, v, pos_k, pos_v, homography, neighbors, out, lse, scale,
                         num_threads);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("pos_k"), py::arg("pos_v"),
      py::arg("homography"), py::arg("neighbors"), py::arg("out"), py::arg("lse"),
      py::arg("dtype"), py::arg("B"), py::arg("M"), py::arg("H"), py::arg("W"), py::arg("C"),
      py::arg("N"), py::arg("window"), py::arg("heads"), py::arg("hom_batch"), py::arg("scale"),
      py::arg("num_threads"),
      "Fused MVAM window-attention forward on raw contiguous CPU buffers (see docs/design.md §3.1).");

  m.def(
      "window_attention_backward",
      [](uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t pos_k, uintptr_t pos_v,
         uintptr_t homography, uintptr_t neighbors, uintptr_t out, uintptr_t lse,
         uintptr_t grad_out, uintptr_t grad_q, uintptr_t grad_k, uintptr_t grad_v,
         uintptr_t grad_pos_k, uintptr_t grad_pos_v, const std::string& dtype, int64_t B,
         int64_t M, int64_t H, int64_t W, int64_t C, int64_t N, int64_t window, int64_t heads,
         int64_t hom_batch, double scale, int num_threads) {
        for (auto [name, p] :
             {std::pair{"q", q}, {"k", k}, {"v", v}, {"pos_k", pos_k}, {"pos_v", pos_v},
              {"homography", homography}, {"neighbors", neighbors}, {"out", out}, {"lse", lse},
              {"grad_out", grad_out}, {"grad_q", grad_q}, {"grad_k", grad_k},
              {"grad_v", grad_v}, {"grad_pos_k", grad_pos_k}, {"grad_pos_v", grad_pos_v}})
          check_pointer(name, p);
        const Shape s{B, M, H, W, C, N, window, heads, hom_batch};
        validate(s, homography, neighbors, scale, num_threads);
        py::gil_scoped_release release;
        if (is_double(dtype))
          backward<double>(s, q, k, v, pos_k, pos_v, homography, neighbors, out, lse, grad_out,
                           grad_q, grad_k, grad_v, grad_pos_k, grad_pos_v, scale, num_threads);
        else
          backward<float>(s, q, k, v, pos_k, pos_v, homography, neighbors, out, lse, grad_out,
                          grad_q, grad_k, grad_v, grad_pos_k, grad_pos_v, scale, num_threads);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("pos_k"), py::arg("pos_v"),
      py::arg("homography"), py::arg("neighbors"), py::arg("out"), py::arg("lse"),
      py::arg("grad_out"), py::arg("grad_q"), py::arg("grad_k"), py::arg("grad_v"),
      py::arg("grad_pos_k"), py::arg("grad_pos_v"), py::arg("dtype"), py::arg("B"),
      py::arg("M"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("N"), py::arg("window"),
      py::arg("heads"), py::arg("hom_batch"), py::arg("scale"), py::arg("num_threads"),
      "Fused MVAM window-attention backward; recomputes logits from q, k and the saved lse.");
}

}  // namespace vsad
