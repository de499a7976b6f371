// Host capability probes: no napi here.
#pragma once

#include <sys/types.h>

#include <string>

namespace procyard {

struct UsernsProbeResult {
  bool ok = false;
  int err = 0;
  std::string step;  // the step that failed, empty when ok
};

// Creates a user namespace (with a mount namespace) in a real child, maps the
// child's uid into it and makes a mount private inside it: what bwrap does
// first. With credentials the child first becomes uid/gid, as a root server's
// workers do. Sysctls can allow all this while AppArmor or seccomp deny it.
UsernsProbeResult ProbeUserNamespace(bool credentials, uid_t uid, gid_t gid);

// pidfd_open + pidfd_send_signal on ourselves (Linux >= 5.3; waitid(P_PIDFD) 5.4).
bool ProbePidfd(int* err);

std::string KernelRelease();

}  // namespace procyard
