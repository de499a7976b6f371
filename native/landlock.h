// Landlock network rules and scopes: no napi here, only Linux.
#pragma once

#include <stdint.h>

#include <string>
#include <vector>

namespace procyard {

// What one sandbox may do on the network, as the parent decided it from the
// kernel's ABI and the config. Filesystem access is never handled: a ruleset
// that handled it would stop bwrap's own mounts.
struct LandlockPolicy {
  bool enabled = false;
  bool restrictBind = false;     // TCP bind only on bindPorts (ABI >= 4)
  std::vector<uint16_t> bindPorts;
  bool restrictConnect = false;  // TCP connect only to connectPorts (ABI >= 4)
  std::vector<uint16_t> connectPorts;
  bool scopeAbstractUnix = false;  // no connect to abstract sockets made outside (ABI >= 6)
  bool scopeSignals = false;       // no signals to processes outside (ABI >= 6)
};

// The kernel's Landlock ABI version (1, 2, ...), or 0 with *err set: ENOSYS
// (not built in) or EOPNOTSUPP (built in, not enabled at boot).
int LandlockAbiVersion(int* err);

// Builds the ruleset for policy: an fd (O_CLOEXEC) for landlock_restrict_self,
// or -1 with *err and *step ("landlock_create_ruleset", "landlock_add_rule").
int CreateLandlockRuleset(const LandlockPolicy& policy, int* err, const char** step);

}  // namespace procyard
