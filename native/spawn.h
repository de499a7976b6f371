// Clone-based process spawn: no napi here, only Linux.
#pragma once

#include <sys/types.h>

#include <memory>
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

// A host path that must exist before anything else is done (a clear error
// naming it, instead of bwrap's failure later).
struct PathCheck {
  std::string path;
  bool directory = false;
};

// A file the spawn opens read-only and places at target in the child (its
// own file offset, e.g. a fresh reader of the seccomp program).
struct OpenAt {
  std::string path;
  int target;
};

// Bytes the child reads from fd `target`: a pipe that holds them and whose
// write end is closed, or a sealed memfd when they do not fit a pipe.
struct DataAt {
  std::string data;
  int target;
};

struct SpawnRequest {
  std::string file;  // executed as given: no PATH search
  std::vector<std::string> argv;
  std::vector<std::string> envp;  // the child's whole environment
  bool hasCredentials = false;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<FdMapping> extraFds;
  // Data the child reads from an fd (bwrap's --args, --seccomp).
  std::vector<DataAt> dataFds;
  int closeBeforeClone = -1;  // e.g. the held port listener; closed on every path
  // Landlock domain the child enters right before exec (ruleset built by Spawn).
  LandlockPolicy landlock;
  // With it, the child also attaches SocketFilter() (seccomp.h): for a sandbox
  // whose own seccomp program (bwrap's --seccomp) does not carry those rules.
  bool socketFilter = false;
  // Limits (native/cgroup.cc): written before the clone, the worker's own
  // cgroup entered by the child before its UID switch.
  std::vector<CgroupWrite> cgroupWrites;  // limits that differ from the prepared cgroup's
  std::vector<std::string> cgroupEnter;   // v1 `tasks` (one per hierarchy) or v2 cgroup.procs: the child writes "0"
  std::string cgroupDir;                  // cgroup2: to be born in (clone3); cgroupEnter[0] is its cgroup.procs
  long long nprocLimit = -1;              // RLIMIT_NPROC for the child when >= 0 (no pids cgroup)
  std::vector<PathCheck> checkPaths;
  std::vector<OpenAt> openFds;
  int statusPipeTarget = -1;  // a pipe whose write end the child gets here; the read end is returned (O_NONBLOCK)
  int stdinFd = -1;           // the child's stdin (a parent fd, left open); -1: /dev/null
};

struct SpawnResult {
  pid_t pid = -1;
  int pidfd = -1;
  int stdoutFd = -1;  // read ends, O_CLOEXEC, owned by the caller
  int stderrFd = -1;
  int statusFd = -1;  // read end of the status pipe, O_NONBLOCK (-1: none asked)
};

struct SpawnError {
  int err = 0;
  std::string syscall;  // "execve", "setuid", ...
  std::string subject;  // "/nope", "60000", ... (may be empty)
  int pathIndex = -1;   // which checkPaths entry failed
};

struct SpawnJobState;

// A spawn in flight. SpawnStart does the parent's whole part on the calling
// thread and clones a child that shares our memory (CLONE_VM) but not our
// wait: the caller goes on while the child sets itself up and execs. The
// child reports through a pipe: end of file once its exec succeeded (the
// pipe is close-on-exec), a failure record if a step failed. Everything the
// child reads lives in this object until then.
class SpawnJob {
 public:
  explicit SpawnJob(std::unique_ptr<SpawnJobState> state);
  ~SpawnJob();
  SpawnJob(const SpawnJob&) = delete;
  SpawnJob& operator=(const SpawnJob&) = delete;
  // Readable once the child has exec'd or failed.
  int ReportFd() const;
  // The child and its fds, now the caller's: Finish no longer reaps the
  // child or closes them on failure (the caller watches the pidfd).
  SpawnResult HandOut();
  // Call once ReportFd is readable: the child, or why it never ran the
  // program (then it is reaped here and its fds closed, unless handed out).
  bool Finish(SpawnResult* out, SpawnError* error);

 private:
  std::unique_ptr<SpawnJobState> state_;
};

// The parent-death signal is tied to the calling thread: the child dies with
// it (for Node: the JS thread, main or worker_thread, that asked for it).
std::unique_ptr<SpawnJob> SpawnStart(SpawnRequest req, SpawnError* error);

}  // namespace procyard
