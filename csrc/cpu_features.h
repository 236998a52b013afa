// Run-time instruction-set selection for the kernels in csrc/kernels/.
//
// Levels, each including the ones below it: generic (baseline x86-64 / any CPU), avx2 (AVX2 +
// FMA + F16C, Haswell and later), avx512 (AVX-512 F/BW/VL/DQ: Skylake-SP and later Xeons, Zen 4)
// and avx512_bf16 (avx512 plus AVX512-BF16: Cooper Lake, Sapphire Rapids, Zen 4). Only the
// mixed-precision screen of min_l2 uses BF16 instructions, so only min_l2.cpp has an
// avx512_bf16 copy; every other kernel runs its avx512 copy at that level. A CPU with AVX-512
// but no BF16 (Skylake to Ice Lake) therefore gets the AVX-512 window attention, and its mixed
// min_l2 falls back to the exact fp32 search (identical results).
//
// Every file in csrc/kernels/ is compiled once per entry of VSAD_FOR_EACH_ISA (see
// CMakeLists.txt) into the namespaces vsad::generic, vsad::avx2 and vsad::avx512; min_l2.cpp
// also into vsad::avx512_bf16. Host code calls VSAD_DISPATCH(fn, args...) (kernels without a
// BF16 copy) or VSAD_DISPATCH_BF16(fn, args...) (min_l2), which jump to the copy for the active
// level.
#pragma once
#include <string>
#include <vector>

#define VSAD_FOR_EACH_ISA(X) X(generic) X(avx2) X(avx512)
#define VSAD_FOR_EACH_ISA_BF16(X) VSAD_FOR_EACH_ISA(X) X(avx512_bf16)

namespace vsad {

enum class Isa { generic = 0, avx2 = 1, avx512 = 2, avx512_bf16 = 3 };

// What CPUID (and XGETBV) say, for the levels above.
struct CpuFeatures {
  bool avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512dq, avx512bf16;
};
CpuFeatures probe_features();
// The highest level these features allow (a pure function, so tests can feed it any CPU).
Isa isa_for_features(const CpuFeatures& f);

// Best instruction set this CPU and OS support.
Isa detected_isa();
// The one kernels use now: detected_isa() unless lowered by set_active_isa or VSAD_CPU_ISA.
Isa active_isa();
// Select a (supported) instruction set; throws std::invalid_argument for unknown/unsupported.
void set_active_isa(const std::string& name);
const char* isa_name(Isa isa);
std::vector<std::string> supported_isas();
// The kernel copy (namespace) an op runs at the active level: `has_bf16_copy` says whether the
// op's file is compiled for avx512_bf16 too.
const char* kernel_isa(bool has_bf16_copy);

}  // namespace vsad

#define VSAD_DISPATCH(fn, ...)                                            \
  do {                                                                    \
    switch (::vsad::active_isa()) {                                       \
      case ::vsad::Isa::avx512_bf16:                                      \
      case ::vsad::Isa::avx512: ::vsad::avx512::fn(__VA_ARGS__); break;   \
      case ::vsad::Isa::avx2: ::vsad::avx2::fn(__VA_ARGS__); break;       \
      default: ::vsad::generic::fn(__VA_ARGS__); break;                   \
    }                                                                     \
  } while (0)

#define VSAD_DISPATCH_BF16(fn, ...)                                              \
  do {                                                                           \
    switch (::vsad::active_isa()) {                                              \
      case ::vsad::Isa::avx512_bf16: ::vsad::avx512_bf16::fn(__VA_ARGS__); break; \
      case ::vsad::Isa::avx512: ::vsad::avx512::fn(__VA_ARGS__); break;          \
      case ::vsad::Isa::avx2: ::vsad::avx2::fn(__VA_ARGS__); break;              \
      default: ::vsad::generic::fn(__VA_ARGS__); break;                          \
    }                                                                            \
  } while (0)
