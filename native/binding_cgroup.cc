// napi glue for the parent's side of cgroups (cgroup.cc).
#include "binding_util.h"
#include "bindings.h"
#include "cgroup.h"

namespace procyard {
namespace {

std::vector<CgroupWrite> ParseWrites(Napi::Env env, Napi::Value value, const std::string& what) {
  if (!value.IsArray()) ThrowType(env, what + " must be an array of {path, value}");
  Napi::Array array = value.As<Napi::Array>();
  if (array.Length() > 64) throw Napi::RangeError::New(env, what + " has more than 64 items");
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

std::vector<std::string> ParsePaths(Napi::Env env, Napi::Value value, const std::string& what) {
  std::vector<std::string> out = ToCStringArray(env, value, what, 16);
  for (size_t i = 0; i < out.size(); i++)
    if (out[i].empty() || out[i][0] != '/') ThrowType(env, what + "[" + std::to_string(i) + "] must be an absolute path");
  return out;
}

// On a pool thread: a mkdir in each of three v1 hierarchies costs ~0.1 ms.
class CreateWorker : public Napi::AsyncWorker {
 public:
  CreateWorker(Napi::Env env, std::vector<std::string> dirs, std::vector<CgroupWrite> writes)
      : Napi::AsyncWorker(env, "procyard:cgroupCreate"), deferred_(Napi::Promise::Deferred::New(env)),
        dirs_(std::move(dirs)), writes_(std::move(writes)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override { ok_ = CgroupCreate(dirs_, writes_, &error_); }
  void OnOK() override {
    if (ok_) deferred_.Resolve(Env().Undefined());
    else deferred_.Reject(SystemError(Env(), error_.err, error_.syscall, error_.subject).Value());
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::vector<std::string> dirs_;
  std::vector<CgroupWrite> writes_;
  SpawnError error_;
  bool ok_ = false;
};

class WriteWorker : public Napi::AsyncWorker {
 public:
  WriteWorker(Napi::Env env, std::vector<CgroupWrite> writes)
      : Napi::AsyncWorker(env, "procyard:cgroupWrite"), deferred_(Napi::Promise::Deferred::New(env)),
        writes_(std::move(writes)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override { ok_ = CgroupWriteAll(writes_, &error_); }
  void OnOK() override {
    if (ok_) deferred_.Resolve(Env().Undefined());
    else deferred_.Reject(SystemError(Env(), error_.err, error_.syscall, error_.subject).Value());
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::vector<CgroupWrite> writes_;
  SpawnError error_;
  bool ok_ = false;
};

// One pool job for a worker's cgroups (one per v1 hierarchy) instead of one each.
class RemoveWorker : public Napi::AsyncWorker {
 public:
  RemoveWorker(Napi::Env env, std::vector<std::string> dirs)
      : Napi::AsyncWorker(env, "procyard:cgroupRemove"), deferred_(Napi::Promise::Deferred::New(env)),
        dirs_(std::move(dirs)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override { ok_ = CgroupRemove(dirs_, &busy_, &error_); }
  void OnOK() override {
    Napi::Env env = Env();
    if (!ok_) {
      deferred_.Reject(SystemError(env, error_.err, error_.syscall, error_.subject).Value());
      return;
    }
    Napi::Array out = Napi::Array::New(env, busy_.size());
    for (uint32_t i = 0; i < busy_.size(); i++) out.Set(i, busy_[i]);
    deferred_.Resolve(out);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::vector<std::string> dirs_;
  std::vector<std::string> busy_;
  SpawnError error_;
  bool ok_ = false;
};

Napi::Value CgroupRemoveJs(const Napi::CallbackInfo& info) {
  auto* worker = new RemoveWorker(info.Env(), ParsePaths(info.Env(), info[0], "dirs"));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value CgroupCreateJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) ThrowType(env, "cgroupCreate options must be an object");
  Napi::Object o = info[0].As<Napi::Object>();
  auto* worker = new CreateWorker(env, ParsePaths(env, o.Get("dirs"), "dirs"), ParseWrites(env, o.Get("writes"), "writes"));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value CgroupWriteJs(const Napi::CallbackInfo& info) {
  auto* worker = new WriteWorker(info.Env(), ParseWrites(info.Env(), info[0], "writes"));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace

void InitCgroup(Napi::Env env, Napi::Object exports) {
  exports.Set("cgroupCreate", Napi::Function::New(env, CgroupCreateJs, "cgroupCreate"));
  exports.Set("cgroupWrite", Napi::Function::New(env, CgroupWriteJs, "cgroupWrite"));
  exports.Set("cgroupRemove", Napi::Function::New(env, CgroupRemoveJs, "cgroupRemove"));
}

}  // namespace procyard
