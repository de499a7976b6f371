#pragma once

#include <napi.h>

namespace procyard {
void InitSpawn(Napi::Env env, Napi::Object exports);
void InitMisc(Napi::Env env, Napi::Object exports);
void InitSeccomp(Napi::Env env, Napi::Object exports);
void InitLandlock(Napi::Env env, Napi::Object exports);
// The `landlock` spawn option (binding_landlock.cc).
struct LandlockPolicy;
LandlockPolicy ParseLandlockPolicy(Napi::Env env, Napi::Value value);
void InitLockfile(Napi::Env env, Napi::Object exports);
void InitCgroup(Napi::Env env, Napi::Object exports);
}  // namespace procyard
