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
void InitSockHooks(Napi::Env env, Napi::Object exports);
void InitMountInject(Napi::Env env, Napi::Object exports);
// Cgroup options shared by cgroupCreate/cgroupWrite and spawn (binding_cgroup.cc).
struct CgroupWrite;
std::vector<CgroupWrite> ParseCgroupWrites(Napi::Env env, Napi::Value value, const std::string& what, size_t max);
std::vector<std::string> ParseAbsolutePaths(Napi::Env env, Napi::Value value, const std::string& what, size_t max);
}  // namespace procyard
