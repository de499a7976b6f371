// napi glue for the parent's side of cgroups (cgroup.cc).
#include <memory>

#include "binding_util.h"
#include "bindings.h"
#include "cgroup.h"

namespace procyard {

std::vector<CgroupWrite> ParseCgroupWrites(Napi::Env env, Napi::Value value, const std::string& what, size_t max) {
  if (!value.IsArray()) ThrowType(env, what + " must be an array of {path, value}");
  Napi::Array array = value.As<Napi::Array>();
  if (array.Length() > max) throw Napi::RangeError::New(env, what + " has more than " + std::to_string(max) + " items");
  std::vector<CgroupWrite> out;
  for (uint32_t i = 0; i < array.Length(); i++) {
    std::string item = what + "[" + std::to_string(i) + "]";
    if (!array.Get(i).IsObject()) ThrowType(env, item + " must be {path, value}");
    Napi::Object o = array.Get(i).As<Napi::Object>();
    CgroupWrite w{ToCString(env, o.Get("path"), item + ".path"), ToCString(env, o.Get("value"), item + ".value")};
    if (w.path.empty() || w.path[0] != '/') ThrowType(env, item + ".path must be an absolute path");
    out.push_back(std::move(w));
  }
  return out;
}

std::vector<std::string> ParseAbsolutePaths(Napi::Env env, Napi::Value value, const std::string& what, size_t max) {
  std::vector<std::string> out = ToCStringArray(env, value, what, max);
  for (size_t i = 0; i < out.size(); i++)
    if (out[i].empty() || out[i][0] != '/') ThrowType(env, what + "[" + std::to_string(i) + "] must be an absolute path");
  return out;
}

namespace {

[[noreturn]] void Reject(Napi::Env env, const SpawnError& error) {
  throw SystemError(env, error.err, error.syscall, error.subject);
}

// One pool job for a worker's cgroups (one per v1 hierarchy) instead of one each.
Napi::Value CgroupRemoveJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct Job {
    std::vector<std::string> dirs, busy;
    SpawnError error;
    bool ok = false;
  };
  auto job = std::make_shared<Job>();
  job->dirs = ParseAbsolutePaths(env, info[0], "dirs", 16);
  return RunAsync(
      env, "procyard:cgroupRemove", [job] { job->ok = CgroupRemove(job->dirs, &job->busy, &job->error); },
      [job](Napi::Env env) -> Napi::Value {
        if (!job->ok) Reject(env, job->error);
        Napi::Array out = Napi::Array::New(env, job->busy.size());
        for (uint32_t i = 0; i < job->busy.size(); i++) out.Set(i, job->busy[i]);
        return out;
      });
}

// On a pool thread: a mkdir in each of three v1 hierarchies costs ~0.1 ms.
Napi::Value CgroupCreateJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) ThrowType(env, "cgroupCreate options must be an object");
  Napi::Object o = info[0].As<Napi::Object>();
  struct Job {
    std::vector<std::string> dirs;
    std::vector<CgroupWrite> writes;
    SpawnError error;
    bool ok = false;
  };
  auto job = std::make_shared<Job>();
  job->dirs = ParseAbsolutePaths(env, o.Get("dirs"), "dirs", 16);
  job->writes = ParseCgroupWrites(env, o.Get("writes"), "writes", 64);
  return RunAsync(
      env, "procyard:cgroupCreate", [job] { job->ok = CgroupCreate(job->dirs, job->writes, &job->error); },
      [job](Napi::Env env) -> Napi::Value {
        if (!job->ok) Reject(env, job->error);
        return env.Undefined();
      });
}

Napi::Value CgroupWriteJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct Job {
    std::vector<CgroupWrite> writes;
    SpawnError error;
    bool ok = false;
  };
  auto job = std::make_shared<Job>();
  job->writes = ParseCgroupWrites(env, info[0], "writes", 64);
  return RunAsync(
      env, "procyard:cgroupWrite", [job] { job->ok = CgroupWriteAll(job->writes, &job->error); },
      [job](Napi::Env env) -> Napi::Value {
        if (!job->ok) Reject(env, job->error);
        return env.Undefined();
      });
}

}  // namespace

void InitCgroup(Napi::Env env, Napi::Object exports) {
  exports.Set("cgroupCreate", Napi::Function::New(env, CgroupCreateJs, "cgroupCreate"));
  exports.Set("cgroupWrite", Napi::Function::New(env, CgroupWriteJs, "cgroupWrite"));
  exports.Set("cgroupRemove", Napi::Function::New(env, CgroupRemoveJs, "cgroupRemove"));
}

}  // namespace procyard
