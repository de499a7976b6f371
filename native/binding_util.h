// Argument checks shared by the napi bindings: every bad value becomes a
// TypeError or RangeError naming the argument, never a crash.
#pragma once

#include <napi.h>
#include <string.h>

#include <string>
#include <vector>

namespace procyard {

inline std::string ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  return name ? name : "errno " + std::to_string(err);
}

// An Error shaped like Node's system errors: code, errno, syscall, path.
inline Napi::Error SystemError(Napi::Env env, int err, const std::string& syscall,
                               const std::string& subject) {
  std::string message = syscall;
  if (!subject.empty()) message += "(" + subject + ")";
  message += ": " + ErrnoName(err) + " (" + strerror(err) + ")";
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", ErrnoName(err));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", syscall);
  if (!subject.empty()) e.Set("path", subject);
  return e;
}

[[noreturn]] inline void ThrowType(Napi::Env env, const std::string& message) {
  throw Napi::TypeError::New(env, message);
}

inline std::string ToCString(Napi::Env env, Napi::Value v, const std::string& what) {
  if (!v.IsString()) ThrowType(env, what + " must be a string");
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s.find('\0') != std::string::npos) ThrowType(env, what + " must not contain a NUL byte");
  return s;
}

inline std::vector<std::string> ToCStringArray(Napi::Env env, Napi::Value v, const std::string& what,
                                               size_t maxItems) {
  if (!v.IsArray()) ThrowType(env, what + " must be an array of strings");
  Napi::Array array = v.As<Napi::Array>();
  if (array.Length() > maxItems)
    throw Napi::RangeError::New(env, what + " has more than " + std::to_string(maxItems) + " items");
  std::vector<std::string> out;
  out.reserve(array.Length());
  for (uint32_t i = 0; i < array.Length(); i++)
    out.push_back(ToCString(env, array.Get(i), what + "[" + std::to_string(i) + "]"));
  return out;
}

inline int64_t ToInteger(Napi::Env env, Napi::Value v, const std::string& what, int64_t min,
                         int64_t max) {
  if (!v.IsNumber()) ThrowType(env, what + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= static_cast<double>(min) && d <= static_cast<double>(max)) || d != static_cast<int64_t>(d))
    throw Napi::RangeError::New(env, what + " must be an integer in [" + std::to_string(min) + ", " +
                                         std::to_string(max) + "], got " + v.ToString().Utf8Value());
  return static_cast<int64_t>(d);
}

inline bool Has(Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  return !v.IsUndefined() && !v.IsNull();
}

// Runs `work` on a libuv pool thread and resolves with `done(env)`; a
// Napi::Error that `done` throws rejects instead. When the job ends while its
// environment is being torn down (a worker_thread terminated), JS can no
// longer run: settling fails and throws, nobody is left to tell, and an
// exception out of here would abort the whole process.
template <typename Work, typename Done>
class PromiseWorker : public Napi::AsyncWorker {
 public:
  PromiseWorker(Napi::Env env, const char* name, Work work, Done done)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)), done_(std::move(done)) {}
  static Napi::Promise Run(Napi::Env env, const char* name, Work work, Done done) {
    auto* worker = new PromiseWorker(env, name, std::move(work), std::move(done));
    Napi::Promise promise = worker->deferred_.Promise();
    worker->Queue();
    return promise;
  }

 protected:
  void Execute() override { work_(); }
  void OnOK() override {
    try {
      try {
        deferred_.Resolve(done_(Env()));
      } catch (const Napi::Error& e) {
        deferred_.Reject(e.Value());
      }
    } catch (const Napi::Error&) {
      // the environment is going away
    }
  }
  void OnError(const Napi::Error& e) override {
    try {
      deferred_.Reject(e.Value());
    } catch (const Napi::Error&) {
      // the environment is going away
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  Work work_;
  Done done_;
};

template <typename Work, typename Done>
Napi::Promise RunAsync(Napi::Env env, const char* name, Work work, Done done) {
  return PromiseWorker<Work, Done>::Run(env, name, std::move(work), std::move(done));
}

}  // namespace procyard
