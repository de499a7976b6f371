// Open-file-description byte-range locks: no napi here.
#pragma once

#include <cstdint>

namespace procyard {
// Write-locks [offset, offset + length) of fd's file without waiting
// (F_OFD_SETLK). 0 when ours now (or already ours through this open file
// description), -EAGAIN when another open file description holds any of it,
// else -errno. The kernel drops the lock when the last fd on this
// description closes, also when the process is killed.
int LockBytes(int fd, uint64_t offset, uint64_t length);
// Unlocks the range (a range not held is a no-op); 0 or -errno.
int UnlockBytes(int fd, uint64_t offset, uint64_t length);
}  // namespace procyard
