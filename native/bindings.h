#pragma once

#include <napi.h>

namespace procyard {
void InitSpawn(Napi::Env env, Napi::Object exports);
void InitMisc(Napi::Env env, Napi::Object exports);
void InitSeccomp(Napi::Env env, Napi::Object exports);
void InitCgroup(Napi::Env env, Napi::Object exports);
}  // namespace procyard
