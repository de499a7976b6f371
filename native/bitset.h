// Fixed-size allocator over [0, size): lowest free index first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace procyard {

class Bitset {
 public:
  explicit Bitset(size_t size);
  // Lowest free index >= from, marked used; -1 when none is free.
  long Alloc(size_t from = 0);
  // Marks index used; false when it already was (or is out of range).
  bool Claim(size_t index);
  // Marks index free; false when it was not in use (or is out of range).
  bool Release(size_t index);
  bool IsSet(size_t index) const;
  size_t InUse() const { return inUse_; }
  size_t Size() const { return size_; }

 private:
  std::vector<uint64_t> words_;
  size_t size_;
  size_t inUse_ = 0;
};

}  // namespace procyard
