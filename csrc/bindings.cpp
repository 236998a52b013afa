// The vsad._C extension module. Each op registers its functions from its own file.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

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
        "Select the kernels' instruction set (generic, avx2, avx512); must be supported.");
  m.def("release_scratch", &vsad::release_scratch, "Free the pooled scratch memory.");
  vsad::register_window_attention(m);
  vsad::register_min_l2(m);
}
