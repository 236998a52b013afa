// The vsad._C extension module. Each op registers its functions from its own file.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "scratch.h"

namespace py = pybind11;

namespace vsad {
void register_window_attention(py::module_& m);
void register_min_l2(py::module_& m);
}  // namespace vsad

PYBIND11_MODULE(_C, m) {
  m.doc() = "vsad fused CPU kernels (OpenMP + SIMD, instruction set chosen at run time)";
  m.def("detected_isa", [] { return std::string(vsad::isa_name(vsad::detected_isa())); },
        "Best instruction set this CPU supports.");
  m.def("active_isa", [] { return std::string(vsad::isa_name(vsad::active_isa())); },
        "Instruction set the kernels use now.");
  m.def("supported_isas", &vsad::supported_isas, "Instruction sets this CPU can run.");
  m.def("set_isa", &vsad::set_active_isa, py::arg("name"),
        "Select the kernels' instruction set (generic, avx2, avx512, avx512_bf16); must be supported.");
  m.def(
      "kernel_isas",
      [] {
        return std::map<std::string, std::string>{
            {"window_attention", vsad::kernel_isa(false)}, {"min_l2", vsad::kernel_isa(true)}};
      },
      "The kernel copy each op runs now (window attention has no BF16-specific copy).");
  m.def(
      "isa_for_features",
      [](const std::vector<std::string>& names) {
        vsad::CpuFeatures f{};
        for (const auto& n : names) {
          if (n == "avx2") f.avx2 = true;
          else if (n == "fma") f.fma = true;
          else if (n == "f16c") f.f16c = true;
          else if (n == "avx512f") f.avx512f = true;
          else if (n == "avx512bw") f.avx512bw = true;
          else if (n == "avx512vl") f.avx512vl = true;
          else if (n == "avx512dq") f.avx512dq = true;
          else if (n == "avx512bf16") f.avx512bf16 = true;
          else
            throw std::invalid_argument(
                "features: got '" + n +
                "', expected avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512dq or avx512bf16");
        }
        return std::string(vsad::isa_name(vsad::isa_for_features(f)));
      },
      py::arg("features"), "The level a CPU with these CPUID features gets (for tests).");
  m.def("release_scratch", &vsad::release_scratch, "Free the pooled scratch memory.");
  m.def("pooled_scratch_bytes", &vsad::pooled_scratch_bytes,
        "Bytes of scratch memory the pool keeps mapped between calls.");
  m.def("scratch_peak_request", &vsad::scratch_peak_request,
        "Largest single scratch request (bytes) since reset_scratch_peak().");
  m.def("reset_scratch_peak", &vsad::reset_scratch_peak);
  m.def("set_scratch_limit", &vsad::set_scratch_limit, py::arg("bytes"),
        "Testing aid: scratch requests above `bytes` fail with MemoryError (0 = no limit).");
  m.def("scratch_limit", &vsad::scratch_limit);
  vsad::register_window_attention(m);
  vsad::register_min_l2(m);
}
