#include "lockfile.h"

#include <errno.h>
#include <fcntl.h>

namespace procyard {
namespace {

int SetLock(int fd, short type, uint64_t offset, uint64_t length) {
  struct flock lock {};
  lock.l_type = type;
  lock.l_whence = SEEK_SET;
  lock.l_start = static_cast<off_t>(offset);
  lock.l_len = static_cast<off_t>(length);
  // OFD locks, not classic POSIX ones: those belong to the process, so a
  // second backend in the same process would see its peer's claims as its
  // own, and closing any fd on the file would drop them all.
  if (fcntl(fd, F_OFD_SETLK, &lock) == 0) return 0;
  // EACCES is the other answer POSIX allows for "held by someone else".
  return errno == EACCES ? -EAGAIN : -errno;
}

}  // namespace

int LockBytes(int fd, uint64_t offset, uint64_t length) { return SetLock(fd, F_WRLCK, offset, length); }

int UnlockBytes(int fd, uint64_t offset, uint64_t length) { return SetLock(fd, F_UNLCK, offset, length); }

}  // namespace procyard
