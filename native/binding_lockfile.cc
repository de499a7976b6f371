// napi glue for the lock-file claims (lockfile.cc).
#include <errno.h>

#include "binding_util.h"
#include "bindings.h"
#include "lockfile.h"

namespace procyard {
namespace {

// Offsets are values (ports, UIDs up to 2^32) and a few bytes past them.
constexpr int64_t kMaxOffset = int64_t{1} << 40;

struct Range {
  int fd;
  uint64_t offset;
  uint64_t length;
};

Range ParseRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Range r;
  r.fd = static_cast<int>(ToInteger(env, info[0], "fd", 0, 0x7fffffff));
  r.offset = static_cast<uint64_t>(ToInteger(env, info[1], "offset", 0, kMaxOffset));
  r.length = info.Length() > 2 && !info[2].IsUndefined()
                 ? static_cast<uint64_t>(ToInteger(env, info[2], "length", 1, kMaxOffset))
                 : 1;
  return r;
}

// lockBytes(fd, offset, length = 1): true when ours now, false when another
// open file description holds it; throws on any other error.
Napi::Value LockBytesJs(const Napi::CallbackInfo& info) {
  Range r = ParseRange(info);
  int rc = LockBytes(r.fd, r.offset, r.length);
  if (rc == -EAGAIN) return Napi::Boolean::New(info.Env(), false);
  if (rc < 0) throw SystemError(info.Env(), -rc, "fcntl(F_OFD_SETLK)", "fd " + std::to_string(r.fd));
  return Napi::Boolean::New(info.Env(), true);
}

Napi::Value UnlockBytesJs(const Napi::CallbackInfo& info) {
  Range r = ParseRange(info);
  int rc = UnlockBytes(r.fd, r.offset, r.length);
  if (rc < 0) throw SystemError(info.Env(), -rc, "fcntl(F_OFD_SETLK, F_UNLCK)", "fd " + std::to_string(r.fd));
  return info.Env().Undefined();
}

}  // namespace

void InitLockfile(Napi::Env env, Napi::Object exports) {
  exports.Set("lockBytes", Napi::Function::New(env, LockBytesJs, "lockBytes"));
  exports.Set("unlockBytes", Napi::Function::New(env, UnlockBytesJs, "unlockBytes"));
}

}  // namespace procyard
