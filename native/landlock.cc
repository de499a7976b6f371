// Landlock rulesets, built in the parent so that the clone child only has to
// call landlock_restrict_self on a ready fd.
#include "landlock.h"

#include <errno.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif

namespace procyard {
namespace {

// The kernel ABI, declared here: Debian 12's 6.1 headers lack the network
// fields and scopes. The kernel takes the struct size as an argument, so a
// shorter prefix is what an older kernel understands.
struct RulesetAttr {
  uint64_t handledAccessFs;
  uint64_t handledAccessNet;  // ABI 4
  uint64_t scoped;            // ABI 6
};
struct NetPortAttr {
  uint64_t allowedAccess;
  uint64_t port;
};

constexpr uint32_t kCreateRulesetVersion = 1U << 0;
constexpr uint32_t kRuleNetPort = 2;
constexpr uint64_t kAccessNetBindTcp = 1ULL << 0;
constexpr uint64_t kAccessNetConnectTcp = 1ULL << 1;
constexpr uint64_t kScopeAbstractUnixSocket = 1ULL << 0;
constexpr uint64_t kScopeSignal = 1ULL << 1;

bool AddPortRule(int fd, uint64_t access, uint16_t port) {
  NetPortAttr rule = {access, port};
  return syscall(SYS_landlock_add_rule, fd, kRuleNetPort, &rule, 0) == 0;
}

}  // namespace

int LandlockAbiVersion(int* err) {
  long abi = syscall(SYS_landlock_create_ruleset, nullptr, 0, kCreateRulesetVersion);
  if (abi < 0) {
    *err = errno;
    return 0;
  }
  *err = 0;
  return static_cast<int>(abi);
}

int CreateLandlockRuleset(const LandlockPolicy& policy, int* err, const char** step) {
  RulesetAttr attr = {};
  if (policy.restrictBind) attr.handledAccessNet |= kAccessNetBindTcp;
  if (policy.restrictConnect) attr.handledAccessNet |= kAccessNetConnectTcp;
  if (policy.scopeAbstractUnix) attr.scoped |= kScopeAbstractUnixSocket;
  if (policy.scopeSignals) attr.scoped |= kScopeSignal;
  // A kernel before ABI 6 rejects a size that covers `scoped` only when it is non-zero; stop short anyway.
  size_t size = attr.scoped ? sizeof attr : offsetof(RulesetAttr, scoped);

  *step = "landlock_create_ruleset";
  int fd = static_cast<int>(syscall(SYS_landlock_create_ruleset, &attr, size, 0));
  if (fd < 0) {
    *err = errno;
    return -1;
  }
  *step = "landlock_add_rule";
  bool ok = true;
  if (policy.restrictBind)
    for (uint16_t port : policy.bindPorts) ok = ok && AddPortRule(fd, kAccessNetBindTcp, port);
  if (policy.restrictConnect)
    for (uint16_t port : policy.connectPorts) ok = ok && AddPortRule(fd, kAccessNetConnectTcp, port);
  if (!ok) {
    *err = errno;
    close(fd);
    return -1;
  }
  *err = 0;
  *step = nullptr;
  return fd;
}

}  // namespace procyard
