// napi glue for the mount injection: checked arguments in, a promise out.
#include <memory>
#include <string_view>

#include "binding_util.h"
#include "bindings.h"
#include "mountinject.h"

namespace procyard {
namespace {

constexpr uint32_t kMaxMounts = 64;

// Absolute, no empty, `.` or `..` component, no trailing slash, not "/":
// the child makes each prefix as a directory and mounts on the last.
bool IsNormalTarget(const std::string& path) {
  if (path.size() < 2 || path[0] != '/' || path.back() == '/') return false;
  for (size_t start = 1; start <= path.size();) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string_view part(path.data() + start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = end + 1;
  }
  return true;
}

std::vector<InjectMount> ToMounts(Napi::Env env, Napi::Value v) {
  if (!v.IsArray()) ThrowType(env, "mounts must be an array");
  Napi::Array array = v.As<Napi::Array>();
  if (array.Length() > kMaxMounts)
    throw Napi::RangeError::New(env, "mounts has more than " + std::to_string(kMaxMounts) + " items");
  std::vector<InjectMount> out;
  for (uint32_t i = 0; i < array.Length(); i++) {
    std::string at = "mounts[" + std::to_string(i) + "]";
    if (!array.Get(i).IsObject()) ThrowType(env, at + " must be an object");
    Napi::Object o = array.Get(i).As<Napi::Object>();
    InjectMount m;
    m.source = ToCString(env, o.Get("source"), at + ".source");
    if (m.source.empty() || m.source[0] != '/') ThrowType(env, at + ".source must be an absolute path, got \"" + m.source + "\"");
    m.target = ToCString(env, o.Get("target"), at + ".target");
    if (!IsNormalTarget(m.target))
      ThrowType(env, at + ".target must be an absolute path other than / without . or .. components or a trailing slash, got \"" +
                         m.target + "\"");
    Napi::Value readOnly = o.Get("readOnly");
    if (!readOnly.IsBoolean()) ThrowType(env, at + ".readOnly must be a boolean");
    m.readOnly = readOnly.As<Napi::Boolean>().Value();
    out.push_back(std::move(m));
  }
  return out;
}

// mountInject(pid, mounts, owner) → Promise<void>, on the pool (a clone and a
// few mount calls per mount).
Napi::Value MountInjectJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t pid = static_cast<pid_t>(ToInteger(env, info[0], "pid", 1, INT32_MAX));
  std::vector<InjectMount> mounts = ToMounts(env, info[1]);
  if (!info[2].IsObject()) ThrowType(env, "owner must be an object {uid, gid}");
  Napi::Object owner = info[2].As<Napi::Object>();
  // 2^32 - 1 is -1: "no change" to chown and setfsuid.
  uid_t uid = static_cast<uid_t>(ToInteger(env, owner.Get("uid"), "owner.uid", 0, 4294967294LL));
  gid_t gid = static_cast<gid_t>(ToInteger(env, owner.Get("gid"), "owner.gid", 0, 4294967294LL));
  struct Job {
    std::vector<InjectMount> mounts;
    InjectError error;
    bool ok = false;
  };
  auto job = std::make_shared<Job>();
  job->mounts = std::move(mounts);
  return RunAsync(
      env, "procyard:mountinject", [=] { job->ok = MountInject(pid, job->mounts, uid, gid, &job->error); },
      [job](Napi::Env env) -> Napi::Value {
        if (job->ok) return env.Undefined();
        Napi::Error error = SystemError(env, job->error.err, job->error.step, job->error.subject);
        if (job->error.mount >= 0) error.Set("mount", Napi::Number::New(env, job->error.mount));
        throw error;
      });
}

}  // namespace

void InitMountInject(Napi::Env env, Napi::Object exports) {
  exports.Set("mountInject", Napi::Function::New(env, MountInjectJs, "mountInject"));
}

}  // namespace procyard
