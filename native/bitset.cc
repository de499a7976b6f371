#include "bitset.h"

namespace procyard {

Bitset::Bitset(size_t size) : words_((size + 63) / 64, 0), size_(size) {}

long Bitset::Alloc(size_t from) {
  if (from >= size_) return -1;
  size_t w = from / 64;
  // Bits below `from` in the first word count as taken.
  uint64_t taken = words_[w] | ((uint64_t{1} << (from % 64)) - 1);
  for (;;) {
    if (~taken != 0) {
      size_t index = w * 64 + static_cast<size_t>(__builtin_ctzll(~taken));
      if (index >= size_) return -1;
      words_[w] |= uint64_t{1} << (index % 64);
      inUse_++;
      return static_cast<long>(index);
    }
    if (++w == words_.size()) return -1;
    taken = words_[w];
  }
}

bool Bitset::Claim(size_t index) {
  if (index >= size_ || IsSet(index)) return false;
  words_[index / 64] |= uint64_t{1} << (index % 64);
  inUse_++;
  return true;
}

bool Bitset::Release(size_t index) {
  if (index >= size_ || !IsSet(index)) return false;
  words_[index / 64] &= ~(uint64_t{1} << (index % 64));
  inUse_--;
  return true;
}

bool Bitset::IsSet(size_t index) const {
  return index < size_ && (words_[index / 64] >> (index % 64)) & 1;
}

}  // namespace procyard
