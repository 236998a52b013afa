// Boundary checks for the bindings: every failure names the argument, its value and what was
// expected, and surfaces in Python as ValueError (pybind11 maps std::invalid_argument).
#pragma once
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace vsad {

template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw std::invalid_argument(os.str());
}

inline void check_positive(const char* name, int64_t value) {
  if (value <= 0) fail(name, ": got ", value, ", expected a positive size");
}

inline void check_pointer(const char* name, uintptr_t ptr) {
  if (ptr == 0) fail(name, ": got a null data pointer, expected an allocated tensor");
}

template <typename T>
const T* cptr(uintptr_t p) {
  return reinterpret_cast<const T*>(p);
}
template <typename T>
T* mptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace vsad
