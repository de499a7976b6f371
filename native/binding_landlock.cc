// napi glue for Landlock: the ABI probe, and the `landlock` spawn option.
#include "binding_util.h"
#include "bindings.h"
#include "landlock.h"

namespace procyard {
namespace {

std::vector<uint16_t> ToPorts(Napi::Env env, Napi::Value v, const std::string& what) {
  if (!v.IsArray()) ThrowType(env, what + " must be an array of port numbers");
  Napi::Array array = v.As<Napi::Array>();
  if (array.Length() > 65535) throw Napi::RangeError::New(env, what + " has more than 65535 items");
  std::vector<uint16_t> out;
  out.reserve(array.Length());
  for (uint32_t i = 0; i < array.Length(); i++)
    out.push_back(static_cast<uint16_t>(ToInteger(env, array.Get(i), what + "[" + std::to_string(i) + "]", 0, 65535)));
  return out;
}

bool ToBool(Napi::Object o, const char* key) { return o.Get(key).ToBoolean(); }

// {abi, code}: abi 0 with code ENOSYS (not built in) or EOPNOTSUPP (not enabled).
Napi::Value LandlockAbiJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int err = 0;
  int abi = LandlockAbiVersion(&err);
  Napi::Object out = Napi::Object::New(env);
  out.Set("abi", abi);
  out.Set("code", err ? ErrnoName(err) : "");
  return out;
}

}  // namespace

LandlockPolicy ParseLandlockPolicy(Napi::Env env, Napi::Value value) {
  if (!value.IsObject()) ThrowType(env, "landlock must be an object");
  Napi::Object o = value.As<Napi::Object>();
  LandlockPolicy policy;
  policy.enabled = true;
  policy.restrictBind = ToBool(o, "restrictBind");
  policy.restrictConnect = ToBool(o, "restrictConnect");
  policy.scopeAbstractUnix = ToBool(o, "scopeAbstractUnix");
  policy.scopeSignals = ToBool(o, "scopeSignals");
  if (policy.restrictBind) policy.bindPorts = ToPorts(env, o.Get("bindPorts"), "landlock.bindPorts");
  if (policy.restrictConnect) policy.connectPorts = ToPorts(env, o.Get("connectPorts"), "landlock.connectPorts");
  if (!policy.restrictBind && !policy.restrictConnect && !policy.scopeAbstractUnix && !policy.scopeSignals)
    ThrowType(env, "landlock must restrict something (omit it for no Landlock domain)");
  return policy;
}

void InitLandlock(Napi::Env env, Napi::Object exports) {
  exports.Set("landlockAbi", Napi::Function::New(env, LandlockAbiJs, "landlockAbi"));
}

}  // namespace procyard
