#include "bindings.h"

namespace procyard {
void InitSeccomp(Napi::Env, Napi::Object) {}
}  // namespace procyard
