// napi glue for probes, the bitset, the /proc sampler and port reservation.
#include <errno.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "binding_util.h"
#include "bindings.h"
#include "bitset.h"
#include "mounttarget.h"
#include "port.h"
#include "probe.h"
#include "procstat.h"
#include "sockdiag.h"

namespace procyard {
namespace {

Napi::Value ProbeUserNamespaceJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool credentials = false;
  uid_t uid = 0;
  gid_t gid = 0;
  if (info.Length() > 0 && info[0].IsObject()) {
    Napi::Object o = info[0].As<Napi::Object>();
    if (Has(o, "uid") != Has(o, "gid")) ThrowType(env, "uid and gid must be given together");
    if (Has(o, "uid")) {
      credentials = true;
      uid = static_cast<uid_t>(ToInteger(env, o.Get("uid"), "uid", 0, 0xfffffffe));
      gid = static_cast<gid_t>(ToInteger(env, o.Get("gid"), "gid", 0, 0xfffffffe));
    }
  }
  auto result = std::make_shared<UsernsProbeResult>();
  return RunAsync(
      env, "procyard:probe", [=] { *result = ProbeUserNamespace(credentials, uid, gid); },
      [result](Napi::Env env) -> Napi::Value {
        Napi::Object out = Napi::Object::New(env);
        out.Set("ok", result->ok);
        out.Set("errno", result->err);
        out.Set("code", result->ok ? std::string() : ErrnoName(result->err));
        out.Set("detail", result->ok ? std::string("user namespace created, uid mapped, mount made private")
                                     : result->step + ": " + ErrnoName(result->err) + " (" +
                                           strerror(result->err) + ")");
        return out;
      });
}

Napi::Value ProbePidfdJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int err = 0;
  bool ok = ProbePidfd(&err);
  Napi::Object out = Napi::Object::New(env);
  out.Set("ok", ok);
  out.Set("errno", err);
  out.Set("code", ok ? std::string() : ErrnoName(err));
  return out;
}

// Whether orphans are reparented to this process: it is PID 1 of its pid
// namespace (a container without an init) or a child subreaper.
Napi::Value AdoptsOrphansJs(const Napi::CallbackInfo& info) {
  int subreaper = 0;
  bool adopts = getpid() == 1 || (prctl(PR_GET_CHILD_SUBREAPER, &subreaper, 0, 0, 0) == 0 && subreaper != 0);
  return Napi::Boolean::New(info.Env(), adopts);
}

// Closes an fd the addon opened (pidfds, pipes, sockets, memfds). Node's
// fs.closeSync warns in a worker_thread about fds fs did not open there.
// False when it was not open.
Napi::Value CloseFdJs(const Napi::CallbackInfo& info) {
  int fd = static_cast<int>(ToInteger(info.Env(), info[0], "fd", 0, 1 << 20));
  return Napi::Boolean::New(info.Env(), close(fd) == 0 || errno != EBADF);
}

Napi::Value KernelReleaseJs(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), KernelRelease());
}

class BitsetJs : public Napi::ObjectWrap<BitsetJs> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Bitset",
                       {InstanceMethod("alloc", &BitsetJs::Alloc), InstanceMethod("claim", &BitsetJs::Claim),
                        InstanceMethod("release", &BitsetJs::Release), InstanceMethod("isSet", &BitsetJs::IsSet),
                        InstanceAccessor("inUse", &BitsetJs::InUse, nullptr),
                        InstanceAccessor("size", &BitsetJs::Size, nullptr)});
  }
  BitsetJs(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BitsetJs>(info), bits_(0) {
    bits_ = Bitset(static_cast<size_t>(ToInteger(info.Env(), info[0], "size", 1, 1 << 24)));
  }

 private:
  size_t Index(const Napi::CallbackInfo& info) {
    return static_cast<size_t>(ToInteger(info.Env(), info[0], "index", 0, static_cast<int64_t>(bits_.Size()) - 1));
  }
  Napi::Value Alloc(const Napi::CallbackInfo& info) {
    size_t from = info.Length() > 0 && !info[0].IsUndefined()
                      ? static_cast<size_t>(ToInteger(info.Env(), info[0], "from", 0, 1 << 24))
                      : 0;
    return Napi::Number::New(info.Env(), static_cast<double>(bits_.Alloc(from)));
  }
  Napi::Value Claim(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), bits_.Claim(Index(info))); }
  Napi::Value Release(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), bits_.Release(Index(info)));
  }
  Napi::Value IsSet(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), bits_.IsSet(Index(info))); }
  Napi::Value InUse(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(bits_.InUse()));
  }
  Napi::Value Size(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(bits_.Size()));
  }

  Bitset bits_;
};

Napi::Object StatToJs(Napi::Env env, const StatFields& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("state", std::string(1, s.state));
  o.Set("ppid", s.ppid);
  o.Set("utime", static_cast<double>(s.utime));
  o.Set("stime", static_cast<double>(s.stime));
  o.Set("starttime", static_cast<double>(s.starttime));
  o.Set("rssPages", static_cast<double>(s.rssPages));
  return o;
}

Napi::Value ParseStatJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) ThrowType(env, "line must be a string");
  StatFields fields;
  if (!ParseStat(info[0].As<Napi::String>().Utf8Value(), &fields)) return env.Null();
  return StatToJs(env, fields);
}

Napi::Value SampleTreesJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) ThrowType(env, "pids must be an array of numbers");
  Napi::Array array = info[0].As<Napi::Array>();
  auto roots = std::make_shared<std::vector<pid_t>>();
  for (uint32_t i = 0; i < array.Length(); i++)
    roots->push_back(static_cast<pid_t>(ToInteger(env, array.Get(i), "pids[" + std::to_string(i) + "]", 1, 0x7fffffff)));
  auto samples = std::make_shared<std::vector<TreeSample>>();
  return RunAsync(
      env, "procyard:sample", [=] { *samples = SampleTrees(*roots); },
      [samples](Napi::Env env) -> Napi::Value {
        Napi::Array out = Napi::Array::New(env, samples->size());
        for (size_t i = 0; i < samples->size(); i++) {
          const TreeSample& s = (*samples)[i];
          Napi::Object o = Napi::Object::New(env);
          o.Set("alive", s.alive);
          o.Set("rssBytes", static_cast<double>(s.rssBytes));
          o.Set("ticks", static_cast<double>(s.ticks));
          Napi::Array pids = Napi::Array::New(env, s.pids.size());
          for (size_t j = 0; j < s.pids.size(); j++) pids.Set(static_cast<uint32_t>(j), s.pids[j]);
          o.Set("pids", pids);
          out.Set(static_cast<uint32_t>(i), o);
        }
        return out;
      });
}

// On a pool thread: one netlink dump of the TCP listeners per family.
Napi::Value LoopbackListenersJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint16_t port = static_cast<uint16_t>(ToInteger(env, info[0], "port", 1, 65535));
  struct Job {
    std::vector<Listener> listeners;
    int err = 0;
    bool ok = false;
  };
  auto job = std::make_shared<Job>();
  return RunAsync(
      env, "procyard:listeners", [job, port] { job->ok = LoopbackListeners(port, &job->listeners, &job->err); },
      [job](Napi::Env env) -> Napi::Value {
        if (!job->ok) throw SystemError(env, job->err, "sock_diag", "");
        Napi::Array out = Napi::Array::New(env, job->listeners.size());
        for (size_t i = 0; i < job->listeners.size(); i++) {
          Napi::Object l = Napi::Object::New(env);
          l.Set("uid", job->listeners[i].uid);
          l.Set("inode", static_cast<double>(job->listeners[i].inode));
          out.Set(static_cast<uint32_t>(i), l);
        }
        return out;
      });
}

// On a pool thread: the fd tables of a process tree, searched for sockets.
Napi::Value SocketsHeldInTreeJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t root = static_cast<pid_t>(ToInteger(env, info[0], "root", 1, 0x3fffffff));
  if (!info[1].IsArray()) ThrowType(env, "inodes must be an array");
  Napi::Array list = info[1].As<Napi::Array>();
  auto inodes = std::make_shared<std::vector<uint64_t>>();
  for (uint32_t i = 0; i < list.Length(); i++)
    inodes->push_back(static_cast<uint64_t>(ToInteger(env, list.Get(i), "inode", 0, (int64_t{1} << 53) - 1)));
  size_t maxFds = static_cast<size_t>(ToInteger(env, info[2], "maxFds", 1, 1 << 24));
  auto found = std::make_shared<std::vector<uint64_t>>();
  return RunAsync(
      env, "procyard:holders", [=] { *found = SocketsHeldInTree(root, *inodes, maxFds); },
      [found](Napi::Env env) -> Napi::Value {
        Napi::Array out = Napi::Array::New(env, found->size());
        for (size_t i = 0; i < found->size(); i++) out.Set(static_cast<uint32_t>(i), static_cast<double>((*found)[i]));
        return out;
      });
}

Napi::Value ReservePortJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int port = static_cast<int>(ToInteger(env, info[0], "port", 1, 65535));
  int fd = ReservePort(port);
  if (fd < 0) throw SystemError(env, -fd, "bind", "127.0.0.1:" + std::to_string(port));
  return Napi::Number::New(env, fd);
}

}  // namespace

// resolveMountTarget(path, {create, workerUids?: [start, end], workerGid?, strangers?, noSymlinks?, trustedUid})
//   -> {path, created} | {problem, code}
Napi::Value ResolveMountTargetJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ToCString(env, info[0], "path");
  if (path.empty() || path[0] != '/') ThrowType(env, "path must be absolute");
  if (!info[1].IsObject()) ThrowType(env, "options must be an object");
  Napi::Object o = info[1].As<Napi::Object>();
  TargetPolicy policy;
  policy.create = o.Get("create").ToBoolean().Value();
  policy.trustedUid = static_cast<uid_t>(ToInteger(env, o.Get("trustedUid"), "trustedUid", 0, 0xfffffffe));
  if (Has(o, "noSymlinks")) policy.noSymlinks = o.Get("noSymlinks").ToBoolean().Value();
  if (Has(o, "workerUids")) {
    Napi::Value range = o.Get("workerUids");
    if (!range.IsArray() || range.As<Napi::Array>().Length() != 2) ThrowType(env, "workerUids must be [start, end]");
    Napi::Array r = range.As<Napi::Array>();
    policy.guardWorkers = true;
    policy.workerUidStart = static_cast<uid_t>(ToInteger(env, r.Get(0u), "workerUids[0]", 0, 0xfffffffe));
    policy.workerUidEnd = static_cast<uid_t>(ToInteger(env, r.Get(1u), "workerUids[1]", 0, 0xfffffffe));
    policy.workerGid = static_cast<gid_t>(ToInteger(env, o.Get("workerGid"), "workerGid", 0, 0xfffffffe));
    if (Has(o, "strangers")) policy.strangers = o.Get("strangers").ToBoolean().Value();
  }
  TargetResult result = ResolveMountTarget(path, policy);
  Napi::Object out = Napi::Object::New(env);
  if (result.ok) {
    out.Set("path", result.path);
    Napi::Array created = Napi::Array::New(env, result.created.size());
    for (uint32_t i = 0; i < result.created.size(); i++) created.Set(i, result.created[i]);
    out.Set("created", created);
  } else {
    out.Set("problem", result.problem);
    out.Set("code", result.err ? ErrnoName(result.err) : "");
  }
  return out;
}

void InitMisc(Napi::Env env, Napi::Object exports) {
  exports.Set("loopbackListeners", Napi::Function::New(env, LoopbackListenersJs, "loopbackListeners"));
  exports.Set("socketsHeldInTree", Napi::Function::New(env, SocketsHeldInTreeJs, "socketsHeldInTree"));
  exports.Set("resolveMountTarget", Napi::Function::New(env, ResolveMountTargetJs, "resolveMountTarget"));
  exports.Set("probeUserNamespace", Napi::Function::New(env, ProbeUserNamespaceJs, "probeUserNamespace"));
  exports.Set("probePidfd", Napi::Function::New(env, ProbePidfdJs, "probePidfd"));
  exports.Set("adoptsOrphans", Napi::Function::New(env, AdoptsOrphansJs, "adoptsOrphans"));
  exports.Set("closeFd", Napi::Function::New(env, CloseFdJs, "closeFd"));
  exports.Set("kernelRelease", Napi::Function::New(env, KernelReleaseJs, "kernelRelease"));
  exports.Set("Bitset", BitsetJs::Define(env));
  exports.Set("parseStat", Napi::Function::New(env, ParseStatJs, "parseStat"));
  exports.Set("sampleTrees", Napi::Function::New(env, SampleTreesJs, "sampleTrees"));
  exports.Set("clockTicksPerSecond", Napi::Number::New(env, static_cast<double>(ClockTicksPerSecond())));
  exports.Set("reservePort", Napi::Function::New(env, ReservePortJs, "reservePort"));
}

}  // namespace procyard
