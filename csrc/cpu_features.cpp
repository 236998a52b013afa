#include "cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace vsad {
namespace {

constexpr int kLevels = 4;

Isa parse(const std::string& name, const char* what = "isa") {
  for (int i = 0; i < kLevels; ++i)
    if (name == isa_name(static_cast<Isa>(i))) return static_cast<Isa>(i);
  throw std::invalid_argument(std::string(what) + ": got '" + name +
                              "', expected one of generic, avx2, avx512, avx512_bf16");
}

Isa initial_isa() {
  Isa best = detected_isa();
  if (const char* env = std::getenv("VSAD_CPU_ISA")) {
    if (*env) {
      Isa wanted = parse(env, "VSAD_CPU_ISA");
      // An override may only lower the choice: a higher one would crash with SIGILL.
      if (static_cast<int>(wanted) < static_cast<int>(best)) return wanted;
    }
  }
  return best;
}

std::atomic<int>& active() {
  static std::atomic<int> isa{static_cast<int>(initial_isa())};
  return isa;
}

}  // namespace

CpuFeatures probe_features() {
  CpuFeatures f{};
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // __builtin_cpu_supports also checks that the OS saves the wide registers (XGETBV).
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.f16c = __builtin_cpu_supports("f16c");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512dq = __builtin_cpu_supports("avx512dq");
  f.avx512bf16 = __builtin_cpu_supports("avx512bf16");
#endif
  return f;
}

Isa isa_for_features(const CpuFeatures& f) {
  // Each level is compiled with the flags of the one below plus its own (CMakeLists.txt), so it
  // requires them all.
  if (!(f.avx2 && f.fma && f.f16c)) return Isa::generic;
  if (!(f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq)) return Isa::avx2;
  if (!f.avx512bf16) return Isa::avx512;
  return Isa::avx512_bf16;
}

Isa detected_isa() {
  static const Isa isa = isa_for_features(probe_features());
  return isa;
}

Isa active_isa() { return static_cast<Isa>(active().load(std::memory_order_relaxed)); }

void set_active_isa(const std::string& name) {
  Isa wanted = parse(name);
  if (static_cast<int>(wanted) > static_cast<int>(detected_isa()))
    throw std::invalid_argument("isa: '" + name + "' is not supported by this CPU (best: " +
                                isa_name(detected_isa()) + ")");
  active().store(static_cast<int>(wanted));
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512_bf16: return "avx512_bf16";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (int i = 0; i <= static_cast<int>(detected_isa()); ++i)
    out.push_back(isa_name(static_cast<Isa>(i)));
  return out;
}

const char* kernel_isa(bool has_bf16_copy) {
  const Isa isa = active_isa();
  if (isa == Isa::avx512_bf16 && !has_bf16_copy) return isa_name(Isa::avx512);
  return isa_name(isa);
}

}  // namespace vsad
