// Host directories put into a running sandbox's mount namespace: no napi
// here, only Linux (the warm pool's late binds).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace procyard {

struct InjectMount {
  std::string source;  // host directory, absolute
  std::string target;  // inside the sandbox: absolute, normalized, not "/"
  bool readOnly = false;
};

struct InjectError {
  int err = 0;
  std::string step;     // "open_tree", "mount_setattr", "pidfd_open", "setns", "mkdir", "move_mount", ...
  std::string subject;  // the path concerned (or the pid)
  int mount = -1;       // index of the mount concerned; -1: none
};

// Mounts each source at its target in the mount namespace of process `pid`,
// as bwrap's --ro-bind/--bind would: recursive, nosuid, nodev, read-only
// when asked, a slave of the host's mounts. Missing target directories are
// made 0755 by (and owned by) uid/gid. In order; stops at the first failure,
// leaving the mounts already made. Needs root. Blocks: call it on a pool thread.
bool MountInject(pid_t pid, const std::vector<InjectMount>& mounts, uid_t uid, gid_t gid, InjectError* error);

}  // namespace procyard
