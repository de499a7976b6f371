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

// A value for a cgroup control file (native/cgroup.h), e.g. a memory limit.
struct CgroupWrite {
  std::string path;
  std::string value;
};

struct SpawnRequest {
  std::string file;  // executed as given: no PATH search
  std::vector<std::string> argv;
  std::vector<std::string> envp;  // the child's whole environment
  bool hasCredentials = false;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<FdMapping> extraFds;
  // Data the child reads from an fd (bwrap's --args): a sealed memfd made
  // here on the spawning thread, placed at memfdTarget (>= 3); none when empty.
  std::string memfdData;
  int memfdTarget = -1;
  int closeBeforeClone = -1;  // e.g. the held port listener; closed on every path
  // Landlock domain the child enters right before exec (ruleset built by Spawn).
  LandlockPolicy landlock;
  // Limits (native/cgroup.cc): written before the clone, the worker's own
  // cgroup entered by the child before its UID switch.
  std::vector<CgroupWrite> cgroupWrites;  // limits that differ from the prepared cgroup's
  std::vector<std::string> cgroupEnter;   // v1 `tasks` (one per hierarchy) or v2 cgroup.procs: the child writes "0"
  std::string cgroupDir;                  // v2: the cgroup itself, to be born in (clone3)
  long long nprocLimit = -1;              // RLIMIT_NPROC for the child when >= 0 (no pids cgroup)
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
