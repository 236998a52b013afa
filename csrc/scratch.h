// Reusable scratch memory for kernels.
//
// On these VMs a fresh large allocation costs ~1.3 us per 4 KiB page (glibc maps each big block
// anew and the kernel zero-fills it on first touch), which is a visible share of a millisecond
// kernel. A small pool of grow-only blocks keeps the pages mapped between calls. Each call
// borrows a block for its duration, so concurrent callers never share one.
#pragma once
#include <cstddef>
#include <memory>

namespace vsad {

class ScratchBlock {
 public:
  explicit ScratchBlock(size_t bytes);
  ~ScratchBlock();
  ScratchBlock(const ScratchBlock&) = delete;
  ScratchBlock& operator=(const ScratchBlock&) = delete;
  void* data() const { return data_; }
  template <typename T>
  T* as() const { return static_cast<T*>(data_); }

 private:
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

// Drops all pooled blocks (frees their memory).
void release_scratch();

}  // namespace vsad
