#include "cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace vsad {
namespace {

Isa probe_cpu() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // __builtin_cpu_supports also checks that the OS saves the wide registers (XGETBV).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bf16"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::generic;
}

Isa parse(const std::string& name) {
  if (name == "generic") return Isa::generic;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512") return Isa::avx512;
  throw std::invalid_argument("isa: got '" + name + "', expected one of generic, avx2, avx512");
}

Isa initial_isa() {
  Isa best = probe_cpu();
  if (const char* env = std::getenv("VSAD_CPU_ISA")) {
    if (*env) {
      Isa wanted = parse(env);
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

Isa detected_isa() {
  static const Isa isa = probe_cpu();
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
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (int i = 0; i <= static_cast<int>(detected_isa()); ++i) out.push_back(isa_name(static_cast<Isa>(i)));
  return out;
}

}  // namespace vsad
