// Python binding of the memory-bank search: validation at the boundary, then the kernel compiled
// for this CPU's instruction set.
#include "min_l2.h"

#include <pybind11/pybind11.h>

#include <string>

#include "checks.h"

namespace py = pybind11;

namespace vsad {
namespace {

BankType parse_bank_type(const std::string& dtype) {
  if (dtype == "float32") return BankType::f32;
  if (dtype == "float16") return BankType::f16;
  if (dtype == "bfloat16") return BankType::bf16;
  fail("bank dtype: got '", dtype, "', expected 'float32', 'float16' or 'bfloat16'");
}

}  // namespace

void register_min_l2(py::module_& m) {
  m.def(
      "min_l2_bank_sq_norms",
      [](uintptr_t bank, const std::string& dtype, int64_t N, int64_t D, uintptr_t out,
         int num_threads) {
        check_pointer("bank", bank);
        check_pointer("out", out);
        check_positive("N (bank rows)", N);
        check_positive("D (feature dimension)", D);
        if (num_threads < 1) fail("num_threads: got ", num_threads, ", expected >= 1");
        const BankType type = parse_bank_type(dtype);
        py::gil_scoped_release release;
        VSAD_DISPATCH_BF16(min_l2_bank_sq_norms, reinterpret_cast<const void*>(bank), type, N, D,
                      mptr<float>(out), num_threads);
      },
      py::arg("bank"), py::arg("dtype"), py::arg("N"), py::arg("D"), py::arg("out"),
      py::arg("num_threads"),
      "Squared norms of the bank rows, with the arithmetic min_l2 uses (float32 chain).");

  m.def(
      "min_l2",
      [](uintptr_t queries, uintptr_t bank, const std::string& dtype, uintptr_t bank_sq_norms,
         int64_t Q, int64_t N, int64_t D, uintptr_t dist, uintptr_t index, int num_threads,
         const std::string& precision) {
        for (auto [name, p] : {std::pair{"queries", queries}, {"bank", bank},
                               {"bank_sq_norms", bank_sq_norms}, {"dist", dist}, {"index", index}})
          check_pointer(name, p);
        check_positive("Q (queries)", Q);
        check_positive("N (bank rows)", N);
        check_positive("D (feature dimension)", D);
        if (num_threads < 1) fail("num_threads: got ", num_threads, ", expected >= 1");
        MinL2Args a{cptr<float>(queries), reinterpret_cast<const void*>(bank),
                    parse_bank_type(dtype), cptr<float>(bank_sq_norms), Q, N, D,
                    mptr<float>(dist), mptr<int64_t>(index), num_threads};
        if (precision != "fp32" && precision != "mixed")
          fail("precision: got '", precision, "', expected 'fp32' or 'mixed'");
        py::gil_scoped_release release;
        if (precision == "mixed")
          VSAD_DISPATCH_BF16(min_l2_search_mixed, a);
        else
          VSAD_DISPATCH_BF16(min_l2_search, a);
      },
      py::arg("queries"), py::arg("bank"), py::arg("dtype"), py::arg("bank_sq_norms"),
      py::arg("Q"), py::arg("N"), py::arg("D"), py::arg("dist"), py::arg("index"),
      py::arg("num_threads"), py::arg("precision") = "fp32",
      "Exact nearest bank row (L2) for every query; float32 queries, float32/16/bf16 bank.");

  m.def(
      "min_l2_local",
      [](uintptr_t queries, uintptr_t bank, const std::string& dtype, uintptr_t bank_sq_norms,
         int64_t B, int64_t S, int64_t H, int64_t W, int64_t D, int64_t radius, uintptr_t dist,
         uintptr_t index, int num_threads) {
        for (auto [name, p] : {std::pair{"queries", queries}, {"bank", bank},
                               {"bank_sq_norms", bank_sq_norms}, {"dist", dist}, {"index", index}})
          check_pointer(name, p);
        check_positive("B (query maps)", B);
        check_positive("S (bank samples)", S);
        check_positive("H", H);
        check_positive("W", W);
        check_positive("D (feature dimension)", D);
        if (radius < 0) fail("radius: got ", radius, ", expected >= 0");
        if (num_threads < 1) fail("num_threads: got ", num_threads, ", expected >= 1");
        MinL2LocalArgs a{cptr<float>(queries), reinterpret_cast<const void*>(bank),
                         parse_bank_type(dtype), cptr<float>(bank_sq_norms), B, S, H, W, D,
                         radius, mptr<float>(dist), mptr<int64_t>(index), num_threads};
        py::gil_scoped_release release;
        VSAD_DISPATCH_BF16(min_l2_local_search, a);
      },
      py::arg("queries"), py::arg("bank"), py::arg("dtype"), py::arg("bank_sq_norms"),
      py::arg("B"), py::arg("S"), py::arg("H"), py::arg("W"), py::arg("D"), py::arg("radius"),
      py::arg("dist"), py::arg("index"), py::arg("num_threads"),
      "Position-local nearest bank row: same position within +-radius, every bank sample.");
}

}  // namespace vsad
