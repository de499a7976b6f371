// The module table. Each Init* lives beside the napi glue of its concern.
#include "bindings.h"

namespace {
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  procyard::InitSpawn(env, exports);
  procyard::InitMisc(env, exports);
  procyard::InitSeccomp(env, exports);
  procyard::InitLandlock(env, exports);
  procyard::InitLockfile(env, exports);
  procyard::InitCgroup(env, exports);
  procyard::InitSockHooks(env, exports);
  procyard::InitMountInject(env, exports);
  return exports;
}
}  // namespace

NODE_API_MODULE(procyard, Init)
