// The child between clone and exec shares our memory (CLONE_VM) and runs
// alongside the thread that cloned it: it may only make raw system calls on
// data prepared by the parent. No malloc, no locks, no glibc wrappers: not
// setuid and friends (they signal every thread of the parent), not even
// syscall() (it stores errno in the cloning thread's TLS, which the child
// shares, behind that thread's back).
#include "spawn.h"
#include "rawsyscall.h"
#include "memfd.h"
#include "seccomp.h"

#include "cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <linux/keyctl.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif

namespace procyard {
namespace {

enum Step : int {
  kNone = 0,
  kSetsid,
  kSigaction,
  kSigmask,
  kDupFd,
  kCloseFds,
  kCgroup,
  kNproc,
  kCore,
  kSetgroups,
  kSetgid,
  kSetuid,
  kDumpable,
  kKeyring,
  kPdeathsig,
  kParentGone,
  kNoNewPrivs,
  kSocketFilter,
  kLandlock,
  kExec,
};

constexpr size_t kMaxFds = 64;
// The child's frames are small (a few hundred bytes); the rest is headroom.
constexpr size_t kStackSize = 64 * 1024;


// What a child that never reached the program tells the parent, on the report pipe.
struct FailureReport {
  int step;
  int err;
  int index;  // which cgroup file, for kCgroup
};

// The kernel's struct sigaction (not glibc's): handler, flags, restorer, mask.
struct KernelSigaction {
  void (*handler)(int);
  unsigned long flags;
  void (*restorer)(void);
  uint64_t mask;
};

struct ChildArgs {
  const char* file;
  char* const* argv;
  char* const* envp;
  const FdMapping* fds;  // includes 0, 1, 2
  size_t nfds;
  int maxTarget;
  int dupBase;  // temporary copies go at or above this
  bool credentials;
  uid_t uid;
  gid_t gid;
  pid_t parentPid;
  // The report pipe's write end: at reportSource until the fd shuffle, at
  // fds[reportIndex].target after it (O_CLOEXEC: the exec closes it).
  int reportSource;
  size_t reportIndex;
  int landlockFd;  // the ruleset, at this fd in the child (O_CLOEXEC); -1: none
  const sock_fprog* socketFilter;  // with the TCP rules: MPTCP and io_uring refused (seccomp.h)
  // Limits: the cgroup fds sit at cgroupFdBase.. after the fd shuffle.
  int cgroupFdBase;
  size_t nCgroupFds;
  bool bornInCgroup;  // clone3(CLONE_INTO_CGROUP): nothing to write, only to close
  bool setNproc;
  struct rlimit nproc;
};

// Reports why the child never reached the program, on the report pipe at
// fd (where that pipe sits in the child at this point), and exits.
[[noreturn]] void ChildFail(int fd, int step, long ret, int index = -1) {
  FailureReport report = {step, static_cast<int>(-ret), index};
  Sys(SYS_write, fd, reinterpret_cast<long>(&report), sizeof report);
  Sys(SYS_exit_group, 127);
  __builtin_unreachable();
}

int ChildMain(void* arg) {
  const ChildArgs* a = static_cast<const ChildArgs*>(arg);
  long r;
  int report = a->reportSource;

  // Own session: a Ctrl-C in the server's terminal must not reach workers.
  if (Failed(r = Sys(SYS_setsid))) ChildFail(report, kSetsid, r);

  // Node ignores SIGPIPE, and an ignored disposition survives exec: reset all
  // of them, or R would not die on a broken pipe. EINVAL marks the few the
  // kernel will not change (SIGKILL, SIGSTOP); skip those.
  KernelSigaction dfl = {SIG_DFL, 0, nullptr, 0};
  for (int sig = 1; sig < 65; sig++) {
    r = Sys(SYS_rt_sigaction, sig, reinterpret_cast<long>(&dfl), 0, sizeof(uint64_t));
    if (Failed(r) && r != -EINVAL) ChildFail(report, kSigaction, r);
  }
  // The parent blocked everything around the clone; the app starts clean.
  uint64_t none = 0;
  if (Failed(r = Sys(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&none), 0, sizeof none)))
    ChildFail(report, kSigmask, r);

  // Move every wanted fd above all targets first, so that placing one cannot
  // clobber the source of another; dup3 then clears O_CLOEXEC on the target.
  int tmp[kMaxFds];
  for (size_t i = 0; i < a->nfds; i++) {
    if (Failed(r = Sys(SYS_fcntl, a->fds[i].source, F_DUPFD_CLOEXEC, a->dupBase))) ChildFail(report, kDupFd, r);
    tmp[i] = static_cast<int>(r);
  }
  // Placing the targets may overwrite the pipe's old number; its copy above
  // every target stays until close_range.
  report = tmp[a->reportIndex];
  for (size_t i = 0; i < a->nfds; i++) {
    if (Failed(r = Sys(SYS_dup3, tmp[i], a->fds[i].target, a->fds[i].cloexec ? O_CLOEXEC : 0)))
      ChildFail(report, kDupFd, r);
  }
  report = a->fds[a->reportIndex].target;
  // Nothing else may leak into the sandbox: not the server's sockets, not the
  // Redis connection, not another worker's pipes.
  for (int fd = 3; fd <= a->maxTarget; fd++) {
    bool wanted = false;
    for (size_t i = 0; i < a->nfds; i++) wanted = wanted || a->fds[i].target == fd;
    if (!wanted) Sys(SYS_close, fd);
  }
  if (Failed(r = Sys(SYS_close_range, a->maxTarget + 1, ~0U, 0))) {
    if (r != -ENOSYS && r != -EINVAL) ChildFail(report, kCloseFds, r);
    // Before Linux 5.9: close up to the limit (listing /proc/self/fd would allocate).
    struct rlimit lim;
    if (Failed(r = Sys(SYS_prlimit64, 0, RLIMIT_NOFILE, 0, reinterpret_cast<long>(&lim)))) ChildFail(report, kCloseFds, r);
    for (rlim_t fd = a->maxTarget + 1; fd < lim.rlim_cur; fd++) Sys(SYS_close, static_cast<long>(fd));
  }

  // Into the worker's own cgroup (v1: once per hierarchy) while still root and
  // before exec: every process of the sandbox is born inside it, none ever
  // runs unlimited. Writing "0" moves the writer (v1: to `tasks`, which moves
  // just this thread without the global lock that cgroup.procs waits on).
  // Born in the cgroup2 directory (clone3), the first file, its cgroup.procs,
  // is already done; a hybrid host's v1 hierarchies follow it.
  for (size_t i = 0; i < a->nCgroupFds; i++) {
    long fd = a->cgroupFdBase + static_cast<long>(i);
    if (!(a->bornInCgroup && i == 0) && Failed(r = Sys(SYS_write, fd, reinterpret_cast<long>("0"), 1)))
      ChildFail(report, kCgroup, r, static_cast<int>(i));
    Sys(SYS_close, fd);
  }
  // No pids cgroup: cap the processes of the worker's UID instead (one UID
  // per worker). The user namespace bwrap makes inherits the cap.
  if (a->setNproc && Failed(r = Sys(SYS_prlimit64, 0, RLIMIT_NPROC, reinterpret_cast<long>(&a->nproc), 0)))
    ChildFail(report, kNproc, r);
  // No core dumps, not even raised by the app itself: a host that pipes
  // cores to a root helper (apport, systemd-coredump) would run it on
  // tenant-shaped data. A hard limit can only be lowered.
  struct rlimit noCore = {0, 0};
  if (Failed(r = Sys(SYS_prlimit64, 0, RLIMIT_CORE, reinterpret_cast<long>(&noCore), 0))) ChildFail(report, kCore, r);

  // Raw calls: glibc's setuid would signal every thread of the parent.
  if (a->credentials) {
    if (Failed(r = Sys(SYS_setgroups, 0, 0))) ChildFail(report, kSetgroups, r);
    if (Failed(r = Sys(SYS_setgid, a->gid))) ChildFail(report, kSetgid, r);
    if (Failed(r = Sys(SYS_setuid, a->uid))) ChildFail(report, kSetuid, r);
  }
  // A session keyring of its own, made as the worker's UID (and freed with
  // its last process): else the sandbox holds the server's (a systemd
  // service has one), reads and changes its keys, and hands keys on to other
  // workers through it. ENOSYS (a kernel without keys) and EPERM (keyctl
  // refused to the whole server, as Docker's seccomp profile does): there is
  // no keyring to share.
  if (Failed(r = Sys(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, 0)) && r != -ENOSYS && r != -EPERM)
    ChildFail(report, kKeyring, r);
  // A credential change leaves us non-dumpable, which makes /proc/self/uid_map
  // root-owned and bwrap's uid map write fail with EPERM.
  if (Failed(r = Sys(SYS_prctl, PR_SET_DUMPABLE, 1, 0, 0, 0))) ChildFail(report, kDumpable, r);
  // After setuid, which clears it. Tied to the cloning thread: the JS thread
  // that asked for the spawn.
  if (Failed(r = Sys(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0))) ChildFail(report, kPdeathsig, r);
  // The parent may have died before the line above took effect.
  if (Sys(SYS_getppid) != a->parentPid) ChildFail(report, kParentGone, -ESRCH);

  // Landlock (network rules, scopes), last: bwrap and every process of the
  // sandbox inherit the domain, and none can leave it. no_new_privs is what
  // lets an unprivileged process restrict itself; bwrap sets it for the app anyway.
  if (a->landlockFd >= 0) {
    if (Failed(r = Sys(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))) ChildFail(report, kNoNewPrivs, r);
    // The TCP rules' blind spots (MPTCP sockets, io_uring), closed whatever
    // seccomp profile bwrap is given.
    if (a->socketFilter != nullptr &&
        Failed(r = Sys(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, reinterpret_cast<long>(a->socketFilter))))
      ChildFail(report, kSocketFilter, r);
    if (Failed(r = Sys(SYS_landlock_restrict_self, a->landlockFd, 0))) ChildFail(report, kLandlock, r);
  }

  r = Sys(SYS_execve, reinterpret_cast<long>(a->file), reinterpret_cast<long>(a->argv),
          reinterpret_cast<long>(a->envp));
  ChildFail(report, kExec, r);
}

const char* StepSyscall(int step) {
  switch (step) {
    case kSetsid: return "setsid";
    case kSigaction: return "rt_sigaction";
    case kSigmask: return "rt_sigprocmask";
    case kDupFd: return "dup3";
    case kCloseFds: return "close_range";
    case kCgroup: return "write(cgroup tasks)";
    case kNproc: return "prlimit64(RLIMIT_NPROC)";
    case kCore: return "prlimit64(RLIMIT_CORE)";
    case kSetgroups: return "setgroups";
    case kSetgid: return "setgid";
    case kSetuid: return "setuid";
    case kDumpable: return "prctl(PR_SET_DUMPABLE)";
    case kKeyring: return "keyctl(KEYCTL_JOIN_SESSION_KEYRING)";
    case kPdeathsig: return "prctl(PR_SET_PDEATHSIG)";
    case kParentGone: return "getppid";
    case kNoNewPrivs: return "prctl(PR_SET_NO_NEW_PRIVS)";
    case kSocketFilter: return "seccomp(socket filter)";
    case kLandlock: return "landlock_restrict_self";
    case kExec: return "execve";
    default: return "spawn";
  }
}

// Child stacks, kept per spawning thread once their child has exec'd: an
// mmap/munmap per spawn would cost a TLB shootdown across every thread of
// Node. A stack is in use from the clone until its child has exec'd or exited.
struct StackCache {
  std::vector<void*> free;
  ~StackCache() {
    for (void* s : free) munmap(s, kStackSize);
  }
};
thread_local StackCache stacks;

void* TakeStack() {
  if (!stacks.free.empty()) {
    void* s = stacks.free.back();
    stacks.free.pop_back();
    return s;
  }
  void* s = mmap(nullptr, kStackSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  return s == MAP_FAILED ? nullptr : s;
}

void GiveStack(void* s) {
  if (stacks.free.size() < 16) {
    stacks.free.push_back(s);
  } else {
    munmap(s, kStackSize);
  }
}

std::vector<char*> CStringArray(const std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (const std::string& s : strings) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

void CloseIfOpen(int* fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

// Closes the fds it holds when it goes: the parent's copies of what the
// child got, once the clone has given the child its own.
struct FdList {
  std::vector<int> fds;
  ~FdList() {
    for (int fd : fds)
      if (fd >= 0) close(fd);
  }
  int Add(int fd) {
    fds.push_back(fd);
    return fd;
  }
};

bool Fail(SpawnError* error, const char* syscallName, std::string subject, int err) {
  error->err = err;
  error->syscall = syscallName;
  error->subject = std::move(subject);
  return false;
}

// The host paths the request names: each must exist (and be a directory where asked).
bool CheckPaths(const SpawnRequest& req, SpawnError* error) {
  for (size_t i = 0; i < req.checkPaths.size(); i++) {
    const PathCheck& check = req.checkPaths[i];
    struct stat st;
    if (stat(check.path.c_str(), &st) < 0) {
      error->pathIndex = static_cast<int>(i);
      return Fail(error, "stat", check.path, errno);
    }
    if (check.directory && !S_ISDIR(st.st_mode)) {
      // It exists, but is not the directory asked for.
      error->pathIndex = static_cast<int>(i);
      return Fail(error, "S_ISDIR", check.path, ENOTDIR);
    }
  }
  return true;
}

// An fd to read `data` from, at offset 0: a pipe holding all of it, its
// write end closed (a few microseconds), or where it does not fit the pipe
// (a large environment, or a pipe shrunk by the per-user pipe limit), a
// sealed memfd. -1 with *err and *step on failure.
int DataFd(const std::string& data, int* err, const char** step) {
  int p[2];
  if (data.size() <= 65536 && pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0) {
    ssize_t n = data.empty() ? 0 : write(p[1], data.data(), data.size());
    close(p[1]);
    if (n == static_cast<ssize_t>(data.size())) {
      fcntl(p[0], F_SETFL, 0);
      return p[0];
    }
    close(p[0]);
  }
  MemfdResult made = SealedMemfd("procyard-data", data.data(), data.size());
  *err = made.err;
  *step = made.step;
  return made.fd;
}

}  // namespace

struct SpawnJobState {
  SpawnRequest req;
  std::vector<char*> argv;
  std::vector<char*> envp;
  FdMapping fds[kMaxFds];
  ChildArgs args{};
  void* stack = nullptr;
  bool childDone = false;  // exec'd or exited: its stack and our memory are free again
  pid_t pid = -1;
  int pidfd = -1;
  int report = -1;
  int stdoutFd = -1;
  int stderrFd = -1;
  int statusFd = -1;

  ~SpawnJobState() {
    for (int* fd : {&pidfd, &report, &stdoutFd, &stderrFd, &statusFd}) CloseIfOpen(fd);
    // A child still between clone and exec may be using it: never reused then.
    if (stack != nullptr && childDone) GiveStack(stack);
  }
};

SpawnJob::SpawnJob(std::unique_ptr<SpawnJobState> state) : state_(std::move(state)) {}

SpawnResult SpawnJob::HandOut() {
  SpawnJobState& s = *state_;
  SpawnResult out;
  out.pid = s.pid;
  out.pidfd = s.pidfd;
  out.stdoutFd = s.stdoutFd;
  out.stderrFd = s.stderrFd;
  out.statusFd = s.statusFd;
  s.pidfd = s.stdoutFd = s.stderrFd = s.statusFd = -1;
  return out;
}
SpawnJob::~SpawnJob() = default;

int SpawnJob::ReportFd() const { return state_->report; }

bool SpawnJob::Finish(SpawnResult* out, SpawnError* error) {
  SpawnJobState& s = *state_;
  FailureReport report{};
  ssize_t n;
  do {
    n = read(s.report, &report, sizeof report);
  } while (n < 0 && errno == EINTR);
  // End of file: the exec closed the child's end (close-on-exec), so the
  // child runs the program in memory of its own now.
  s.childDone = true;
  CloseIfOpen(&s.report);
  if (n == 0) {
    if (s.pidfd >= 0) *out = HandOut();
    return true;
  }
  // The child never reached the program: reap it here (unless handed out:
  // then the caller's watcher does). It exits right after its report.
  if (s.pidfd >= 0) {
    siginfo_t info;
    while (waitid(static_cast<idtype_t>(P_PIDFD), s.pidfd, &info, WEXITED) < 0 && errno == EINTR) {
    }
  }
  if (n != static_cast<ssize_t>(sizeof report)) return Fail(error, "read(spawn report)", "", n < 0 ? errno : EIO);
  std::string subject;
  switch (report.step) {
    case kExec: subject = s.req.file; break;
    case kSetuid: subject = std::to_string(s.req.uid); break;
    case kSetgid: subject = std::to_string(s.req.gid); break;
    case kCgroup:
      if (report.index >= 0 && static_cast<size_t>(report.index) < s.req.cgroupEnter.size())
        subject = s.req.cgroupEnter[report.index];
      break;
    default: break;
  }
  return Fail(error, StepSyscall(report.step), subject, report.err);
}

std::unique_ptr<SpawnJob> SpawnStart(SpawnRequest req, SpawnError* error) {
  // closeBeforeClone is closed on every path out of here (error already set).
  auto bail = [&]() {
    if (req.closeBeforeClone >= 0) close(req.closeBeforeClone);
    return nullptr;
  };
  auto failed = [&](const char* syscallName, std::string subject, int err) {
    Fail(error, syscallName, std::move(subject), err);
    return bail();
  };
  // 0-2, the status pipe, the ruleset and the report pipe, and the rest.
  if (req.extraFds.size() + req.openFds.size() + req.dataFds.size() + req.cgroupEnter.size() + 6 > kMaxFds)
    return failed("spawn", "too many extra fds", E2BIG);
  if (!CheckPaths(req, error)) return bail();

  // The worker's cgroup (native/cgroup.cc): its limits set, and open what the
  // child enters it through; closed once the child has its copies.
  CgroupFds cgroup;
  if (!CgroupPrepare(req, &cgroup, error)) return bail();

  FdList ours;  // the parent's copies of the child's fds, closed after the clone
  // The Landlock ruleset: the child only enters it.
  int rulesetFd = -1;
  if (req.landlock.enabled) {
    int err = 0;
    const char* step = nullptr;
    rulesetFd = CreateLandlockRuleset(req.landlock, &err, &step);
    if (rulesetFd < 0) return failed(step, "", err);
    ours.Add(rulesetFd);
  }
  // The child's data fds (bwrap's --args: the app's environment).
  std::vector<FdMapping> data;
  for (const DataAt& d : req.dataFds) {
    int err = 0;
    const char* step = nullptr;
    int fd = DataFd(d.data, &err, &step);
    if (fd < 0) return failed(step, "data fd", err);
    data.push_back({ours.Add(fd), d.target});
  }
  std::vector<FdMapping> opened;
  for (const OpenAt& o : req.openFds) {
    // Without blocking: a FIFO (or a device) named here would hold this
    // thread, the server's event loop, until a writer came. Only a regular
    // file is handed on, read as bwrap reads it (blocking).
    int fd = open(o.path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return failed("open", o.path, errno);
    ours.Add(fd);
    struct stat st;
    if (fstat(fd, &st) < 0) return failed("fstat", o.path, errno);
    if (!S_ISREG(st.st_mode)) return failed("open (not a regular file)", o.path, EINVAL);
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0) return failed("fcntl", o.path, errno);
    opened.push_back({fd, o.target});
  }

  auto state = std::make_unique<SpawnJobState>();
  SpawnJobState& s = *state;
  int outPipe[2], errPipe[2], reportPipe[2], statusPipe[2] = {-1, -1};
  if (pipe2(outPipe, O_CLOEXEC) < 0) return failed("pipe2", "", errno);
  s.stdoutFd = outPipe[0];
  ours.Add(outPipe[1]);
  if (pipe2(errPipe, O_CLOEXEC) < 0) return failed("pipe2", "", errno);
  s.stderrFd = errPipe[0];
  ours.Add(errPipe[1]);
  if (pipe2(reportPipe, O_CLOEXEC) < 0) return failed("pipe2", "", errno);
  s.report = reportPipe[0];
  ours.Add(reportPipe[1]);
  if (req.statusPipeTarget >= 0) {
    // Read without blocking (bwrap's few bytes, when a stop needs them).
    if (pipe2(statusPipe, O_CLOEXEC) < 0) return failed("pipe2", "", errno);
    s.statusFd = statusPipe[0];
    fcntl(s.statusFd, F_SETFL, O_NONBLOCK);
    ours.Add(statusPipe[1]);
  }
  // The child's stdin: the caller's fd, else /dev/null, opened per spawn (an
  // fd kept open for good would show as a leak to anyone counting the server's fds).
  int stdinFd = req.stdinFd;
  if (stdinFd < 0) {
    stdinFd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (stdinFd < 0) return failed("open", "/dev/null", errno);
    ours.Add(stdinFd);
  }
  s.stack = TakeStack();
  if (s.stack == nullptr) return failed("mmap", "", errno);
  // Until the child is done the stack is its own: a failure below before the
  // clone hands it back at once.
  s.childDone = true;

  FdMapping* fds = s.fds;
  fds[0] = {stdinFd, 0};
  fds[1] = {outPipe[1], 1};
  fds[2] = {errPipe[1], 2};
  size_t nfds = 3;
  int maxTarget = 2;
  auto place = [&](FdMapping m) {
    fds[nfds++] = m;
    maxTarget = std::max(maxTarget, m.target);
  };
  for (const FdMapping& m : req.extraFds) place(m);
  for (const FdMapping& m : opened) place(m);
  for (const FdMapping& m : data) place(m);
  if (statusPipe[1] >= 0) place({statusPipe[1], req.statusPipeTarget});
  // The child's own fds go above every target: the cgroup fds (the child
  // writes and closes them), then the ruleset and the report pipe, both kept
  // close-on-exec so the program never sees them.
  ChildArgs& args = s.args;
  args.cgroupFdBase = maxTarget + 1;
  args.nCgroupFds = cgroup.enter.size();
  for (int fd : cgroup.enter) fds[nfds++] = {fd, ++maxTarget};
  args.landlockFd = -1;
  args.socketFilter = req.socketFilter && rulesetFd >= 0 ? SocketFilter() : nullptr;
  if (rulesetFd >= 0) {
    args.landlockFd = ++maxTarget;
    fds[nfds++] = {rulesetFd, args.landlockFd, true};
  }
  args.reportSource = reportPipe[1];
  args.reportIndex = nfds;
  fds[nfds++] = {reportPipe[1], ++maxTarget, true};
  args.setNproc = req.nprocLimit >= 0;
  args.nproc.rlim_cur = args.nproc.rlim_max = static_cast<rlim_t>(req.nprocLimit);

  s.req = std::move(req);
  s.argv = CStringArray(s.req.argv);
  s.envp = CStringArray(s.req.envp);
  args.file = s.req.file.c_str();
  args.argv = s.argv.data();
  args.envp = s.envp.data();
  args.fds = fds;
  args.nfds = nfds;
  args.maxTarget = maxTarget;
  args.dupBase = maxTarget + 1;
  args.credentials = s.req.hasCredentials;
  args.uid = s.req.uid;
  args.gid = s.req.gid;
  args.parentPid = getpid();

  // A handler of ours must never run on the child's stack in shared memory.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  // Closed as late as possible: the port stays ours until the clone, so no
  // other program can take it between reservation and the app's bind.
  // shutdown first: under load the listener was seen accepting for ~10 ms
  // after close() returned (another reference outlived ours), long enough
  // to pass a health check before the app listened. shutdown stops it now.
  if (s.req.closeBeforeClone >= 0) {
    shutdown(s.req.closeBeforeClone, SHUT_RDWR);
    close(s.req.closeBeforeClone);
  }
  s.childDone = false;
  char* top = static_cast<char*>(s.stack) + kStackSize;
  // No CLONE_VFORK: this thread goes on while the child sets up and execs;
  // the report pipe says when it is done with our memory. Where that is
  // refused (EINVAL: qemu-user takes CLONE_VM only with CLONE_VFORK), the
  // child runs while this thread waits, as a vfork; and without
  // CLONE_PIDFD (Linux < 5.2), the pidfd is opened after the fact (the child
  // is not reaped before we do, so its pid is still its own). Whatever
  // worked is remembered.
  static const unsigned long kTries[] = {CLONE_VM | CLONE_PIDFD, CLONE_VM | CLONE_VFORK | CLONE_PIDFD,
                                         CLONE_VM | CLONE_VFORK};
  static std::atomic<int> firstTry{0};
  pid_t pid = -1;
  int pidfd = -1;
  for (int i = firstTry.load(); i < 3; i++) {
    const unsigned long flags = kTries[i];
    // cgroup v2: born in its cgroup (native/cgroup.cc says why); where the
    // kernel refuses, the plain clone below, and the child enters by a write.
    if (cgroup.dir >= 0 && (flags & CLONE_PIDFD)) {
      args.bornInCgroup = true;
      pid = CloneIntoCgroup(ChildMain, s.stack, kStackSize, flags, &args, cgroup.dir, &pidfd);
      args.bornInCgroup = pid > 0;
      if (pid > 0) break;
    }
    pid = clone(ChildMain, top, static_cast<int>(flags | SIGCHLD), &args, &pidfd);
    if (pid > 0 || errno != EINVAL) {
      if (pid > 0) firstTry.store(i);
      break;
    }
  }
  if (pid > 0 && pidfd < 0) pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  int cloneErrno = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) {
    s.childDone = true;
    Fail(error, "clone", "", cloneErrno);
    return nullptr;
  }
  if (pidfd < 0) {
    // Without a pidfd we could neither watch nor signal it safely.
    kill(pid, SIGKILL);
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    s.childDone = true;
    Fail(error, "pidfd_open", "", cloneErrno);
    return nullptr;
  }
  s.pid = pid;
  s.pidfd = pidfd;
  // `ours` and `cgroup` close the parent's copies now: the child has its own.
  return std::make_unique<SpawnJob>(std::move(state));
}

}  // namespace procyard
