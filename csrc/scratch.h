// Scratch memory for kernels, allocated by the host code before any parallel region.
//
// Two rules meet here. (1) An exception must never leave an OpenMP region (it would call
// std::terminate and kill Python), so every buffer a kernel needs is allocated before its
// `#pragma omp parallel`, on the calling thread, where a failure throws ScratchAllocError
// (a std::bad_alloc, which pybind11 turns into Python's MemoryError). (2) On these VMs a fresh
// large allocation costs ~1.3 us per 4 KiB page (glibc maps each big block anew and the kernel
// zero-fills it on first touch), a visible share of a millisecond kernel, so ScratchBlock keeps
// a few blocks mapped between calls — at most kMaxPooledBytes in all: a larger block is freed
// when its call ends, so a single big call does not pin its memory for the process lifetime.
//
// Per-ISA kernel code (csrc/kernels/) uses only the plain functions below: they are defined
// once, in host code, so no ISA-specific copy of them can exist.
#pragma once
#include <cstddef>
#include <new>
#include <string>

namespace vsad {

// A std::bad_alloc whose message says who asked for how much.
class ScratchAllocError : public std::bad_alloc {
 public:
  ScratchAllocError(const char* what, size_t bytes);
  const char* what() const noexcept override;  // out of line: the class's key function

 private:
  std::string message_;
};

// Throws ScratchAllocError for `what` (e.g. "min_l2") and `bytes`.
[[noreturn]] void throw_scratch_failure(const char* what, size_t bytes);

// 64-byte aligned, not pooled; nullptr when the allocation fails or exceeds the scratch limit.
// Free with scratch_free. For kernels that allocate a few buffers up front and free them on
// exit (min_l2).
void* scratch_alloc(size_t bytes);
void scratch_free(void* p);

// A pooled, 64-byte aligned block borrowed for one call; throws ScratchAllocError when the
// memory cannot be had. Concurrent callers never share a block.
class ScratchBlock {
 public:
  ScratchBlock(size_t bytes, const char* what);
  ~ScratchBlock();
  ScratchBlock(const ScratchBlock&) = delete;
  ScratchBlock& operator=(const ScratchBlock&) = delete;
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

// Most bytes kept mapped in the pool between calls.
constexpr size_t kMaxPooledBytes = size_t(64) << 20;

// Drops all pooled blocks (frees their memory).
void release_scratch();
// Bytes held by the pool now.
size_t pooled_scratch_bytes();
// Largest single scratch request since the last reset_scratch_peak() (0 if none).
size_t scratch_peak_request();
void reset_scratch_peak();

// Testing aid: every scratch request above `bytes` fails as if memory were exhausted (0 = no
// limit), so the MemoryError path can be exercised without exhausting the machine.
void set_scratch_limit(size_t bytes);
size_t scratch_limit();

}  // namespace vsad
