// Sealed in-memory files: data handed to a child by fd, never by path.
#pragma once

#include <stddef.h>

namespace procyard {

struct MemfdResult {
  int fd = -1;            // O_CLOEXEC, sealed, offset 0; -1 on failure
  int err = 0;            // errno of the failed step
  const char* step = "";  // the failed step, "" on success
};

// A memfd holding exactly `data`, sealed against any change: what the child
// reads is what we wrote, even if something else gets hold of the fd.
MemfdResult SealedMemfd(const char* name, const void* data, size_t size);

}  // namespace procyard
