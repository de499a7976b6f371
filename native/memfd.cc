#include "memfd.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

namespace procyard {

MemfdResult SealedMemfd(const char* name, const void* data, size_t size) {
  MemfdResult out;
  int fd = -1;
  auto fail = [&](const char* step) {
    out.err = errno;
    out.step = step;
    if (fd >= 0) close(fd);
    out.fd = -1;
    return out;
  };
  fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return fail("memfd_create");
  const char* p = static_cast<const char*>(data);
  size_t left = size;
  while (left > 0) {
    ssize_t n = write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail("write");
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) < 0)
    return fail("fcntl(F_ADD_SEALS)");
  if (lseek(fd, 0, SEEK_SET) < 0) return fail("lseek");
  out.fd = fd;
  return out;
}

}  // namespace procyard
