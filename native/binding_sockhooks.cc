// napi glue for the cgroup socket hooks: the rule table in, fds out.
#include <memory>

#include "binding_util.h"
#include "bindings.h"
#include "sockhooks.h"

namespace procyard {
namespace {

std::vector<uint8_t> ToBytes(Napi::Env env, Napi::Value v, const std::string& what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    ThrowType(env, what + " must be a Uint8Array");
  Napi::Uint8Array bytes = v.As<Napi::Uint8Array>();
  return std::vector<uint8_t>(bytes.Data(), bytes.Data() + bytes.ElementLength());
}

PortSpan ToSpan(Napi::Env env, Napi::Value v, const std::string& what) {
  if (!v.IsArray() || v.As<Napi::Array>().Length() != 2) ThrowType(env, what + " must be [lo, hi]");
  Napi::Array a = v.As<Napi::Array>();
  PortSpan span{static_cast<uint16_t>(ToInteger(env, a.Get(0u), what + "[0]", 0, 65535)),
                static_cast<uint16_t>(ToInteger(env, a.Get(1u), what + "[1]", 0, 65535))};
  if (span.lo > span.hi) throw Napi::RangeError::New(env, what + " must have lo <= hi");
  return span;
}

std::vector<AddrRule> ToRules(Napi::Env env, Napi::Value v, const std::string& what) {
  if (!v.IsArray()) ThrowType(env, what + " must be an array");
  Napi::Array array = v.As<Napi::Array>();
  if (array.Length() > 4096) throw Napi::RangeError::New(env, what + " has more than 4096 rules");
  std::vector<AddrRule> out;
  for (uint32_t i = 0; i < array.Length(); i++) {
    std::string at = what + "[" + std::to_string(i) + "]";
    if (!array.Get(i).IsObject()) ThrowType(env, at + " must be an object");
    Napi::Object o = array.Get(i).As<Napi::Object>();
    AddrRule rule;
    rule.local = o.Get("local").ToBoolean();
    if (Has(o, "ports")) {
      PortSpan span = ToSpan(env, o.Get("ports"), at + ".ports");
      rule.portLo = span.lo, rule.portHi = span.hi;
    }
    if (!rule.local) {
      rule.family = static_cast<int>(ToInteger(env, o.Get("family"), at + ".family", 4, 6));
      if (rule.family == 5) throw Napi::RangeError::New(env, at + ".family must be 4 or 6");
      std::vector<uint8_t> address = ToBytes(env, o.Get("address"), at + ".address");
      size_t size = rule.family == 4 ? 4 : 16;
      if (address.size() != size) throw Napi::RangeError::New(env, at + ".address must hold " + std::to_string(size) + " bytes");
      memcpy(rule.addr, address.data(), size);
      rule.prefix = static_cast<int>(ToInteger(env, o.Get("prefix"), at + ".prefix", 0, static_cast<int64_t>(size * 8)));
    }
    out.push_back(rule);
  }
  return out;
}

SockHookRules ToRuleTable(Napi::Env env, Napi::Value v) {
  if (!v.IsObject()) ThrowType(env, "rules must be an object");
  Napi::Object o = v.As<Napi::Object>();
  SockHookRules rules;
  rules.workerPorts = ToSpan(env, o.Get("workerPorts"), "rules.workerPorts");
  rules.deny = ToRules(env, o.Get("deny"), "rules.deny");
  rules.allowOnly = Has(o, "allow");
  if (rules.allowOnly) rules.allow = ToRules(env, o.Get("allow"), "rules.allow");
  rules.tcpPortsOnly = Has(o, "tcpPorts");
  if (rules.tcpPortsOnly) {
    if (!o.Get("tcpPorts").IsArray()) ThrowType(env, "rules.tcpPorts must be an array of [lo, hi]");
    Napi::Array spans = o.Get("tcpPorts").As<Napi::Array>();
    if (spans.Length() > 65535) throw Napi::RangeError::New(env, "rules.tcpPorts has too many spans");
    for (uint32_t i = 0; i < spans.Length(); i++)
      rules.tcpPorts.push_back(ToSpan(env, spans.Get(i), "rules.tcpPorts[" + std::to_string(i) + "]"));
  }
  rules.uidEntries = static_cast<uint32_t>(ToInteger(env, o.Get("uidEntries"), "rules.uidEntries", 1, 1 << 20));
  return rules;
}

Napi::Error HookError(Napi::Env env, const SockHookError& e) {
  Napi::Error error = SystemError(env, e.err, e.step, "");
  if (!e.log.empty()) error.Set("verifierLog", e.log);
  return error;
}

// sockHooksLoad(rules) → Promise<{uidPorts, localAddrs, otherPorts, programs: [{name, fd}]}>, on the pool (the verifier takes ms).
Napi::Value SockHooksLoadJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SockHookRules rules = ToRuleTable(env, info[0]);
  struct Job {
    SockHooks hooks;
    SockHookError error;
    bool ok = false;
  };
  auto job = std::make_shared<Job>();
  return RunAsync(
      env, "procyard:sockhooks", [=] { job->ok = SockHooksLoad(rules, &job->hooks, &job->error); },
      [job](Napi::Env env) -> Napi::Value {
        if (!job->ok) throw HookError(env, job->error);
        Napi::Object out = Napi::Object::New(env);
        out.Set("uidPorts", job->hooks.uidPorts);
        out.Set("localAddrs", job->hooks.localAddrs);
        out.Set("otherPorts", job->hooks.otherPorts);
        Napi::Array programs = Napi::Array::New(env, kSockHookPrograms);
        for (int p = 0; p < kSockHookPrograms; p++) {
          Napi::Object program = Napi::Object::New(env);
          program.Set("name", SockHookName(p));
          program.Set("fd", job->hooks.progs[p]);
          programs.Set(static_cast<uint32_t>(p), program);
        }
        out.Set("programs", programs);
        return out;
      });
}

// sockHooksAttach(programFds, dir): every program onto the cgroup2 directory.
Napi::Value SockHooksAttachJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray() || info[0].As<Napi::Array>().Length() != kSockHookPrograms)
    ThrowType(env, "programs must be the array of fds sockHooksLoad gave");
  SockHooks hooks;
  Napi::Array fds = info[0].As<Napi::Array>();
  for (int p = 0; p < kSockHookPrograms; p++)
    hooks.progs[p] = static_cast<int>(ToInteger(env, fds.Get(static_cast<uint32_t>(p)), "programs[i]", 0, 1 << 20));
  std::string dir = ToCString(env, info[1], "dir");
  SockHookError error;
  if (!SockHooksAttach(hooks, dir, &error)) throw HookError(env, error);
  return env.Undefined();
}

int MapFd(Napi::Env env, Napi::Value v) { return static_cast<int>(ToInteger(env, v, "map", 0, 1 << 20)); }

// bpfMapSet(map, key, value): throws a system error.
Napi::Value BpfMapSetJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int map = MapFd(env, info[0]);
  std::vector<uint8_t> key = ToBytes(env, info[1], "key"), value = ToBytes(env, info[2], "value");
  int r = BpfMapUpdate(map, key.data(), value.data());
  if (r < 0) throw SystemError(env, -r, "bpf(BPF_MAP_UPDATE_ELEM)", "");
  return env.Undefined();
}

// bpfMapDelete(map, key) → whether the key was there.
Napi::Value BpfMapDeleteJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int map = MapFd(env, info[0]);
  std::vector<uint8_t> key = ToBytes(env, info[1], "key");
  int r = BpfMapDelete(map, key.data());
  if (r < 0 && r != -ENOENT) throw SystemError(env, -r, "bpf(BPF_MAP_DELETE_ELEM)", "");
  return Napi::Boolean::New(env, r == 0);
}

// bpfMapKeys(map, keySize) → Uint8Array[].
Napi::Value BpfMapKeysJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int map = MapFd(env, info[0]);
  size_t keySize = static_cast<size_t>(ToInteger(env, info[1], "keySize", 1, 64));
  std::vector<std::vector<uint8_t>> keys;
  int r = BpfMapKeys(map, keySize, &keys);
  if (r < 0) throw SystemError(env, -r, "bpf(BPF_MAP_GET_NEXT_KEY)", "");
  Napi::Array out = Napi::Array::New(env, keys.size());
  for (size_t i = 0; i < keys.size(); i++) {
    Napi::Uint8Array bytes = Napi::Uint8Array::New(env, keySize);
    memcpy(bytes.Data(), keys[i].data(), keySize);
    out.Set(static_cast<uint32_t>(i), bytes);
  }
  return out;
}

}  // namespace

void InitSockHooks(Napi::Env env, Napi::Object exports) {
  exports.Set("sockHooksLoad", Napi::Function::New(env, SockHooksLoadJs, "sockHooksLoad"));
  exports.Set("sockHooksAttach", Napi::Function::New(env, SockHooksAttachJs, "sockHooksAttach"));
  exports.Set("bpfMapSet", Napi::Function::New(env, BpfMapSetJs, "bpfMapSet"));
  exports.Set("bpfMapDelete", Napi::Function::New(env, BpfMapDeleteJs, "bpfMapDelete"));
  exports.Set("bpfMapKeys", Napi::Function::New(env, BpfMapKeysJs, "bpfMapKeys"));
}

}  // namespace procyard
