// napi glue for spawn, exit watching and pidfd signals.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <set>

#include "binding_util.h"
#include "bindings.h"
#include "procstat.h"
#include "spawn.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

namespace procyard {
namespace {

// Calls each(item, "key[i]") for every object in the array o[key] (when
// present): at most max of them, each one an object.
template <typename Each>
void ForEachObject(Napi::Env env, Napi::Object o, const char* key, uint32_t max, const std::string& arrayShape,
                   const std::string& itemShape, Each each) {
  if (!Has(o, key)) return;
  Napi::Value value = o.Get(key);
  if (!value.IsArray()) ThrowType(env, std::string(key) + " must be an array of " + arrayShape);
  Napi::Array array = value.As<Napi::Array>();
  if (array.Length() > max)
    throw Napi::RangeError::New(env, std::string(key) + " has more than " + std::to_string(max) + " items");
  for (uint32_t i = 0; i < array.Length(); i++) {
    std::string what = std::string(key) + "[" + std::to_string(i) + "]";
    if (!array.Get(i).IsObject()) ThrowType(env, what + " must be " + itemShape);
    each(array.Get(i).As<Napi::Object>(), what);
  }
}

SpawnRequest ParseSpawnOptions(Napi::Env env, Napi::Value value) {
  if (!value.IsObject()) ThrowType(env, "spawn options must be an object");
  Napi::Object o = value.As<Napi::Object>();
  SpawnRequest req;
  req.file = ToCString(env, o.Get("file"), "file");
  if (req.file.empty()) ThrowType(env, "file must not be empty");
  // argv as one string of NUL-separated items (what src/native.ts sends: one
  // conversion instead of one per item), or an array.
  Napi::Value argv = o.Get("argv");
  if (argv.IsString()) {
    std::string joined = argv.As<Napi::String>().Utf8Value();
    for (size_t at = 0;;) {
      size_t end = joined.find('\0', at);
      req.argv.push_back(joined.substr(at, end == std::string::npos ? std::string::npos : end - at));
      if (end == std::string::npos) break;
      at = end + 1;
    }
    if (req.argv.size() > 65536) throw Napi::RangeError::New(env, "argv has more than 65536 items");
  } else {
    req.argv = ToCStringArray(env, argv, "argv", 65536);
  }
  if (req.argv.empty()) ThrowType(env, "argv must hold at least argv[0]");
  req.envp = ToCStringArray(env, o.Get("env"), "env", 65536);
  for (size_t i = 0; i < req.envp.size(); i++) {
    size_t eq = req.envp[i].find('=');
    if (eq == std::string::npos || eq == 0)
      ThrowType(env, "env[" + std::to_string(i) + "] must be KEY=VALUE with a non-empty KEY");
  }
  if (Has(o, "uid") != Has(o, "gid")) ThrowType(env, "uid and gid must be given together");
  if (Has(o, "uid")) {
    req.hasCredentials = true;
    req.uid = static_cast<uid_t>(ToInteger(env, o.Get("uid"), "uid", 0, 0xfffffffe));
    req.gid = static_cast<gid_t>(ToInteger(env, o.Get("gid"), "gid", 0, 0xfffffffe));
  }
  ForEachObject(env, o, "data", 8, "{data, target}", "{data, target}", [&](Napi::Object d, const std::string& what) {
    if (!d.Get("data").IsBuffer()) ThrowType(env, what + ".data must be a Buffer");
    Napi::Buffer<char> bytes = d.Get("data").As<Napi::Buffer<char>>();
    int target = static_cast<int>(ToInteger(env, d.Get("target"), what + ".target", 3, 1023));
    req.dataFds.push_back({std::string(bytes.Data(), bytes.Length()), target});
  });
  std::set<int> fdTargets;
  ForEachObject(env, o, "fds", 32, "{source, target}", "{source, target} or {path, target}", [&](Napi::Object m, const std::string& what) {
    int target = static_cast<int>(ToInteger(env, m.Get("target"), what + ".target", 3, 1023));
    if (!fdTargets.insert(target).second) ThrowType(env, what + ".target " + std::to_string(target) + " is used twice");
    if (Has(m, "path")) {
      // Opened read-only by the spawn: an offset of its own.
      req.openFds.push_back({ToCString(env, m.Get("path"), what + ".path"), target});
      return;
    }
    FdMapping mapping;
    mapping.source = static_cast<int>(ToInteger(env, m.Get("source"), what + ".source", 0, 1 << 20));
    mapping.target = target;
    if (fcntl(mapping.source, F_GETFD) < 0)
      throw SystemError(env, errno, "fcntl", what + ".source " + std::to_string(mapping.source));
    req.extraFds.push_back(mapping);
  });
  if (Has(o, "stdin")) {
    req.stdinFd = static_cast<int>(ToInteger(env, o.Get("stdin"), "stdin", 0, 1 << 20));
    if (fcntl(req.stdinFd, F_GETFD) < 0) throw SystemError(env, errno, "fcntl", "stdin " + std::to_string(req.stdinFd));
  }
  if (Has(o, "statusPipe"))
    req.statusPipeTarget = static_cast<int>(ToInteger(env, o.Get("statusPipe"), "statusPipe", 3, 1023));
  // Every fd the child gets has a target of its own.
  std::set<int> taken;
  for (const FdMapping& m : req.extraFds) taken.insert(m.target);
  for (const OpenAt& m : req.openFds) taken.insert(m.target);
  for (const DataAt& d : req.dataFds)
    if (!taken.insert(d.target).second)
      ThrowType(env, "data target " + std::to_string(d.target) + " is also another fd's target");
  if (req.statusPipeTarget >= 0 && !taken.insert(req.statusPipeTarget).second)
    ThrowType(env, "statusPipe " + std::to_string(req.statusPipeTarget) + " is also another fd's target");
  ForEachObject(env, o, "checkPaths", 64, "{path, directory}", "{path, directory}", [&](Napi::Object c, const std::string& what) {
    req.checkPaths.push_back({ToCString(env, c.Get("path"), what + ".path"), c.Get("directory").ToBoolean()});
  });
  if (Has(o, "closeBeforeClone"))
    req.closeBeforeClone = static_cast<int>(ToInteger(env, o.Get("closeBeforeClone"), "closeBeforeClone", 3, 1 << 20));
  if (Has(o, "landlock")) req.landlock = ParseLandlockPolicy(env, o.Get("landlock"));
  if (Has(o, "socketFilter")) {
    if (!o.Get("socketFilter").IsBoolean()) ThrowType(env, "socketFilter must be a boolean");
    req.socketFilter = o.Get("socketFilter").As<Napi::Boolean>().Value();
  }
  // Limits (src/process/cgroup.ts).
  if (Has(o, "cgroupEnter")) req.cgroupEnter = ParseAbsolutePaths(env, o.Get("cgroupEnter"), "cgroupEnter", 8);
  if (Has(o, "cgroupDir")) {
    req.cgroupDir = ToCString(env, o.Get("cgroupDir"), "cgroupDir");
    if (req.cgroupDir.empty() || req.cgroupDir[0] != '/') ThrowType(env, "cgroupDir must be an absolute path");
  }
  if (Has(o, "cgroupWrites")) req.cgroupWrites = ParseCgroupWrites(env, o.Get("cgroupWrites"), "cgroupWrites", 16);
  if (Has(o, "rlimitNproc"))
    req.nprocLimit = ToInteger(env, o.Get("rlimitNproc"), "rlimitNproc", 1, 1LL << 32);
  return req;
}

// {pid, pidfd, stdout, stderr, status?}: the child as JS sees it.
Napi::Object ChildObject(Napi::Env env, const SpawnResult& child) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", child.pid);
  out.Set("pidfd", child.pidfd);
  out.Set("stdout", child.stdoutFd);
  out.Set("stderr", child.stderrFd);
  if (child.statusFd >= 0) out.Set("status", child.statusFd);
  return out;
}

// One spawn in flight, watched on the event loop: the report pipe turns
// readable when the child has exec'd (end of file) or failed (a record).
// One epoll wake-up and no thread-pool round trip.
class SpawnWatch {
 public:
  SpawnWatch(Napi::Env env, std::unique_ptr<SpawnJob> job, bool handedOut)
      : env_(env), deferred_(Napi::Promise::Deferred::New(env)), context_(env, "procyard:spawn"),
        job_(std::move(job)), handedOut_(handedOut) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  // Takes ownership of itself: deleted once the promise is settled.
  void Start() {
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env_, &loop);
    if (loop == nullptr || uv_poll_init(loop, &poll_, job_->ReportFd()) != 0) {
      // Cannot watch it: wait here (the child is at most its set-up away).
      Settle();
      delete this;
      return;
    }
    poll_.data = this;
    napi_add_env_cleanup_hook(env_, OnTeardown, this);
    uv_poll_start(&poll_, UV_READABLE, [](uv_poll_t* handle, int, int) {
      SpawnWatch* self = static_cast<SpawnWatch*>(handle->data);
      uv_poll_stop(handle);
      napi_remove_env_cleanup_hook(self->env_, OnTeardown, self);
      try {
        Napi::HandleScope scope(self->env_);
        // Promise reactions run when this scope closes, as after any callback.
        Napi::CallbackScope callbackScope(self->env_, self->context_);
        self->Settle();
      } catch (const Napi::Error&) {
        // JS can no longer run here (a worker_thread being terminated): nobody is left to tell.
      }
      uv_close(reinterpret_cast<uv_handle_t*>(handle),
               [](uv_handle_t* h) { delete static_cast<SpawnWatch*>(h->data); });
    });
  }

 private:
  // The environment (a worker_thread) ends with this spawn in flight. The
  // loop must hold no open handle then, or Node aborts the whole process.
  // The child may still be using the job's memory until it execs or dies
  // with its thread, so the job and this object are left to the process.
  static void OnTeardown(void* arg) {
    SpawnWatch* self = static_cast<SpawnWatch*>(arg);
    uv_poll_stop(&self->poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(&self->poll_), nullptr);
    (void)self->job_.release();
  }

  void Settle() {
    SpawnResult result;
    SpawnError error;
    bool ok = job_->Finish(&result, &error);
    job_.reset();
    if (!ok) {
      deferred_.Reject(SystemError(env_, error.err, error.syscall, error.subject).Value());
      return;
    }
    if (handedOut_) {
      deferred_.Resolve(env_.Undefined());
      return;
    }
    deferred_.Resolve(ChildObject(env_, result));
  }

  Napi::Env env_;
  Napi::Promise::Deferred deferred_;
  Napi::AsyncContext context_;
  std::unique_ptr<SpawnJob> job_;
  bool handedOut_;
  uv_poll_t poll_{};
};

SpawnRequest ParseOrCloseListener(const Napi::CallbackInfo& info) {
  try {
    return ParseSpawnOptions(info.Env(), info[0]);
  } catch (...) {
    // The contract: closeBeforeClone is closed by every call, whatever happens.
    // Only a value that is an fd number: truncating 19.5 or 2^32 + 19 would
    // close fd 19, which the caller never named.
    if (info[0].IsObject()) {
      Napi::Value fd = info[0].As<Napi::Object>().Get("closeBeforeClone");
      double d = fd.IsNumber() ? fd.As<Napi::Number>().DoubleValue() : -1;
      if (d >= 3 && d <= (1 << 20) && d == static_cast<int>(d)) close(static_cast<int>(d));
    }
    throw;
  }
}

Napi::Error StartError(Napi::Env env, const SpawnError& error) {
  Napi::Error e = SystemError(env, error.err, error.syscall, error.subject);
  if (error.pathIndex >= 0) e.Set("pathIndex", Napi::Number::New(env, error.pathIndex));
  return e;
}

// spawnStart(options): the child and its fds at once, the caller's from now
// on, and `ready`, which settles once it has exec'd (rejects naming the
// failed step; the caller's pidfd watcher then sees it exit with 127).
Napi::Value SpawnStartJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SpawnError error;
  std::unique_ptr<SpawnJob> job = SpawnStart(ParseOrCloseListener(info), &error);
  if (!job) throw StartError(env, error);
  Napi::Object out = ChildObject(env, job->HandOut());
  auto* watch = new SpawnWatch(env, std::move(job), true);
  out.Set("ready", watch->Promise());
  watch->Start();
  return out;
}

Napi::Value SpawnJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SpawnError error;
  std::unique_ptr<SpawnJob> job = SpawnStart(ParseOrCloseListener(info), &error);
  if (!job) {
    Napi::Promise::Deferred failed = Napi::Promise::Deferred::New(env);
    failed.Reject(StartError(env, error).Value());
    return failed.Promise();
  }
  auto* watch = new SpawnWatch(env, std::move(job), false);
  Napi::Promise promise = watch->Promise();
  watch->Start();
  return promise;
}

// Watches a pidfd on the event loop; when the process exits, calls back with
// {code, signal}. With reap set it first reaps the process if it is our child
// (both null when it is not: another process reaps it); without, it never
// waits for it, and both are null. Reap only what nobody else here waits for:
// a child of libuv's (child_process) reaped here never gets its 'exit'. Never
// waitpid(-1), for the same reason.
class PidWatcher : public Napi::ObjectWrap<PidWatcher> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "PidWatcher",
                       {InstanceMethod("ref", &PidWatcher::RefJs),
                        InstanceMethod("unref", &PidWatcher::UnrefJs),
                        InstanceMethod("close", &PidWatcher::CloseJs)});
  }

  PidWatcher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PidWatcher>(info) {
    Napi::Env env = info.Env();
    pidfd_ = static_cast<int>(ToInteger(env, info[0], "pidfd", 0, 1 << 20));
    if (!info[1].IsFunction()) ThrowType(env, "callback must be a function");
    reap_ = info[2].ToBoolean();
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    poll_ = new uv_poll_t;
    int rc = uv_poll_init(loop, poll_, pidfd_);
    if (rc != 0) {
      delete poll_;
      poll_ = nullptr;
      throw Napi::Error::New(env, std::string("uv_poll_init(pidfd): ") + uv_strerror(rc));
    }
    poll_->data = this;
    uv_poll_start(poll_, UV_READABLE, OnReadable);
    napi_add_env_cleanup_hook(env, OnTeardown, this);
    Ref();  // alive while the handle is open, even if JS drops us
  }

 private:
  static void OnReadable(uv_poll_t* handle, int status, int) {
    PidWatcher* self = static_cast<PidWatcher*>(handle->data);
    siginfo_t info{};
    // The pidfd names exactly this process: ECHILD when it is not our child.
    if (status == 0 && self->reap_ &&
        waitid(static_cast<idtype_t>(P_PIDFD), self->pidfd_, &info, WEXITED | WNOHANG) == 0 && info.si_pid == 0)
      return;  // spurious wakeup: still running
    self->StopPolling();
    try {
      self->Report(info);
    } catch (const Napi::Error&) {
      // JS can no longer run here (a worker_thread being terminated): nobody is left to tell.
    }
  }

  // The environment (a worker_thread) ends while the process runs: the
  // loop must hold no open handle then, or Node aborts the whole process.
  // A process we would reap (a sandbox's monitor) would die with that
  // thread anyway (its parent-death signal is tied to the thread that cloned
  // it), but its init might not (bwrap arms the init's only after set-up),
  // and nobody would reap the monitor: a zombie per worker until the server
  // exits. So the sandbox is ended and reaped here.
  static void OnTeardown(void* arg) {
    PidWatcher* self = static_cast<PidWatcher*>(arg);
    if (self->poll_ == nullptr) return;
    uv_poll_stop(self->poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(self->poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    self->poll_ = nullptr;
    if (self->reap_) KillTreeAndReap(self->pidfd_, kTeardownWaitMs);
  }
  static constexpr int kTeardownWaitMs = 1000;

  void Report(const siginfo_t& info) {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    Napi::Object result = Napi::Object::New(env);
    if (info.si_pid != 0 && info.si_code == CLD_EXITED) {
      result.Set("code", info.si_status);
      result.Set("signal", env.Null());
    } else if (info.si_pid != 0) {
      result.Set("code", env.Null());
      result.Set("signal", sigabbrev_np(info.si_status) ? std::string("SIG") + sigabbrev_np(info.si_status)
                                                        : std::to_string(info.si_status));
    } else {
      result.Set("code", env.Null());
      result.Set("signal", env.Null());
    }
    Napi::FunctionReference callback = std::move(callback_);
    try {
      callback.MakeCallback(env.Global(), {result});
    } catch (const Napi::Error& e) {
      napi_fatal_exception(env, e.Value());
    }
  }

  void StopPolling() {
    if (poll_ == nullptr) return;
    napi_remove_env_cleanup_hook(Env(), OnTeardown, this);
    uv_poll_stop(poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
    Unref();
  }

  Napi::Value RefJs(const Napi::CallbackInfo& info) {
    if (poll_) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
    return info.This();
  }
  Napi::Value UnrefJs(const Napi::CallbackInfo& info) {
    if (poll_) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
    return info.This();
  }
  Napi::Value CloseJs(const Napi::CallbackInfo& info) {
    StopPolling();
    callback_.Reset();
    return info.Env().Undefined();
  }

  int pidfd_ = -1;
  bool reap_ = true;
  uv_poll_t* poll_ = nullptr;
  Napi::FunctionReference callback_;
};

Napi::Value PidfdOpenJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = static_cast<int>(ToInteger(env, info[0], "pid", 1, 0x7fffffff));
  int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) throw SystemError(env, errno, "pidfd_open", std::to_string(pid));
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  return Napi::Number::New(env, fd);
}

// Signals by pidfd, so a recycled pid is never hit. Returns false when the
// process is already gone (ESRCH), throws on any other error.
Napi::Value PidfdSignalJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(ToInteger(env, info[0], "pidfd", 0, 1 << 20));
  int sig = static_cast<int>(ToInteger(env, info[1], "signal", 0, 64));
  if (syscall(SYS_pidfd_send_signal, fd, sig, nullptr, 0) == 0) return Napi::Boolean::New(env, true);
  if (errno == ESRCH) return Napi::Boolean::New(env, false);
  throw SystemError(env, errno, "pidfd_send_signal", std::to_string(fd));
}

// A pipe with both ends O_CLOEXEC: [read, write]. Node has no pipe(2).
// pipe({nonBlockingRead: true}) makes the read end O_NONBLOCK, so that
// fs.readSync on it returns EAGAIN instead of blocking the event loop.
Napi::Value PipeJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  // Options first: a throwing getter must not leave a pipe behind.
  bool nonBlockingRead = info.Length() > 0 && info[0].IsObject() &&
                         info[0].As<Napi::Object>().Get("nonBlockingRead").ToBoolean();
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) < 0) throw SystemError(env, errno, "pipe2", "");
  if (nonBlockingRead) fcntl(fds[0], F_SETFL, O_NONBLOCK);
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, fds[0]);
  out.Set(1u, fds[1]);
  return out;
}

}  // namespace

void InitSpawn(Napi::Env env, Napi::Object exports) {
  exports.Set("spawn", Napi::Function::New(env, SpawnJs, "spawn"));
  exports.Set("spawnStart", Napi::Function::New(env, SpawnStartJs, "spawnStart"));
  exports.Set("PidWatcher", PidWatcher::Define(env));
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpenJs, "pidfdOpen"));
  exports.Set("pidfdSignal", Napi::Function::New(env, PidfdSignalJs, "pidfdSignal"));
  exports.Set("pipe", Napi::Function::New(env, PipeJs, "pipe"));
}

}  // namespace procyard
