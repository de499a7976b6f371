// Clone-based process spawn: no napi here, only Linux.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "landlock.h"

namespace procyard {

struct FdMapping {
  int source;  // fd in the parent
  int target;  // number it gets in the child (>= 3)
  bool cloexec = false;  // for the child's own steps only: closed at exec
};

struct SpawnRequest {
  std::string file;  // executed as given: no PATH search
  std::vector<std::string> argv;
  std::vector<std::string> envp;  // the child's whole environment
  bool hasCredentials = false;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<FdMapping> extraFds;
  int closeBeforeClone = -1;  // e.g. the held port listener; closed on every path
  // Landlock domain the child enters right before exec (ruleset built by Spawn).
  LandlockPolicy landlock;
};

struct SpawnResult {
  pid_t pid = -1;
  int pidfd = -1;
  int stdoutFd = -1;  // read ends, O_CLOEXEC, owned by the caller
  int stderrFd = -1;
};

struct SpawnError {
  int err = 0;
  std::string syscall;  // "execve", "setuid", ...
  std::string subject;  // "/nope", "60000", ... (may be empty)
};

// Safe to call from any long-lived thread; the child's parent-death signal is
// tied to the calling thread, so never call it from a thread that may exit.
bool Spawn(const SpawnRequest& req, SpawnResult* out, SpawnError* error);

}  // namespace procyard
