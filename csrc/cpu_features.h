// Run-time instruction-set selection for the kernels in csrc/kernels/.
//
// Every file in csrc/kernels/ is compiled three times (see CMakeLists.txt), once per entry of
// VSAD_FOR_EACH_ISA, into the namespaces vsad::generic, vsad::avx2 and vsad::avx512. The host code
// calls VSAD_DISPATCH(fn, args...) which jumps to the copy chosen from CPUID at load time.
#pragma once
#include <string>
#include <vector>

#define VSAD_FOR_EACH_ISA(X) X(generic) X(avx2) X(avx512)

namespace vsad {

enum class Isa { generic = 0, avx2 = 1, avx512 = 2 };

// Best instruction set this CPU and OS support.
Isa detected_isa();
// The one kernels use now: detected_isa() unless lowered by set_active_isa or VSAD_CPU_ISA.
Isa active_isa();
// Select a (supported) instruction set; throws std::invalid_argument for unknown/unsupported.
void set_active_isa(const std::string& name);
const char* isa_name(Isa isa);
std::vector<std::string> supported_isas();

}  // namespace vsad

#define VSAD_DISPATCH(fn, ...)                                        \
  do {                                                                \
    switch (::vsad::active_isa()) {                                   \
      case ::vsad::Isa::avx512: ::vsad::avx512::fn(__VA_ARGS__); break; \
      case ::vsad::Isa::avx2: ::vsad::avx2::fn(__VA_ARGS__); break;     \
      default: ::vsad::generic::fn(__VA_ARGS__); break;                 \
    }                                                                 \
  } while (0)
