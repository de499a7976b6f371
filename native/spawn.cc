// The child between clone and exec shares our memory (CLONE_VM): it may only
// make raw system calls on data prepared by the parent. No malloc, no locks,
// no glibc wrappers that broadcast to other threads (setuid and friends).
#include "spawn.h"
#include "memfd.h"

#include "cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>

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
  kPdeathsig,
  kParentGone,
  kNoNewPrivs,
  kLandlock,
  kExec,
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
  int landlockFd;  // the ruleset, at this fd in the child (O_CLOEXEC); -1: none
  // Limits: the cgroup fds sit at cgroupFdBase.. after the fd shuffle.
  int cgroupFdBase;
  size_t nCgroupFds;
  bool bornInCgroup;  // clone3(CLONE_INTO_CGROUP): nothing to write, only to close
  bool setNproc;
  struct rlimit nproc;
  volatile int failIndex;  // which cgroup fd failed
  // Written by the child before _exit(127); read after the vfork wait.
  volatile int failStep;
  volatile int failErrno;
};

[[noreturn]] void ChildFail(ChildArgs* a, int step) {
  a->failErrno = errno;
  a->failStep = step;
  syscall(SYS_exit_group, 127);
  __builtin_unreachable();
}

int ChildMain(void* arg) {
  ChildArgs* a = static_cast<ChildArgs*>(arg);

  // Own session: a Ctrl-C in the server's terminal must not reach workers.
  if (syscall(SYS_setsid) < 0) ChildFail(a, kSetsid);

  // Node ignores SIGPIPE, and an ignored disposition survives exec: reset all
  // of them, or R would not die on a broken pipe. EINVAL marks the few the
  // kernel will not change (SIGKILL, SIGSTOP); skip those.
  KernelSigaction dfl = {SIG_DFL, 0, nullptr, 0};
  for (int sig = 1; sig < 65; sig++) {
    if (syscall(SYS_rt_sigaction, sig, &dfl, nullptr, sizeof(uint64_t)) < 0 &&
        errno != EINVAL)
      ChildFail(a, kSigaction);
  }
  // The parent blocked everything around the clone; the app starts clean.
  uint64_t none = 0;
  if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, sizeof none) < 0)
    ChildFail(a, kSigmask);

  // Move every wanted fd above all targets first, so that placing one cannot
  // clobber the source of another; dup3 then clears O_CLOEXEC on the target.
  int tmp[64];
  for (size_t i = 0; i < a->nfds; i++) {
    tmp[i] = static_cast<int>(syscall(SYS_fcntl, a->fds[i].source, F_DUPFD_CLOEXEC, a->dupBase));
    if (tmp[i] < 0) ChildFail(a, kDupFd);
  }
  for (size_t i = 0; i < a->nfds; i++) {
    if (syscall(SYS_dup3, tmp[i], a->fds[i].target, a->fds[i].cloexec ? O_CLOEXEC : 0) < 0)
      ChildFail(a, kDupFd);
  }
  // Nothing else may leak into the sandbox: not the server's sockets, not the
  // Redis connection, not another worker's pipes.
  for (int fd = 3; fd <= a->maxTarget; fd++) {
    bool wanted = false;
    for (size_t i = 0; i < a->nfds; i++) wanted = wanted || a->fds[i].target == fd;
    if (!wanted) syscall(SYS_close, fd);
  }
  if (syscall(SYS_close_range, a->maxTarget + 1, ~0U, 0) < 0) {
    if (errno != ENOSYS && errno != EINVAL) ChildFail(a, kCloseFds);
    // Before Linux 5.9: close up to the limit (listing /proc/self/fd would allocate).
    struct rlimit lim;
    if (syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, nullptr, &lim) < 0) ChildFail(a, kCloseFds);
    for (rlim_t fd = a->maxTarget + 1; fd < lim.rlim_cur; fd++) syscall(SYS_close, fd);
  }

  // Into the worker's own cgroup (v1: once per hierarchy) while still root and
  // before exec: every process of the sandbox is born inside it, none ever
  // runs unlimited. Writing "0" moves the writer (v1: to `tasks`, which moves
  // just this thread without the global lock that cgroup.procs waits on).
  for (size_t i = 0; i < a->nCgroupFds; i++) {
    if (!a->bornInCgroup && syscall(SYS_write, a->cgroupFdBase + i, "0", 1) < 0) {
      a->failIndex = static_cast<int>(i);
      ChildFail(a, kCgroup);
    }
    syscall(SYS_close, a->cgroupFdBase + i);
  }
  // No pids cgroup: cap the processes of the worker's UID instead (one UID
  // per worker). The user namespace bwrap makes inherits the cap.
  if (a->setNproc && syscall(SYS_prlimit64, 0, RLIMIT_NPROC, &a->nproc, nullptr) < 0) ChildFail(a, kNproc);
  // No core dumps, not even raised by the app itself: a host that pipes
  // cores to a root helper (apport, systemd-coredump) would run it on
  // tenant-shaped data. A hard limit can only be lowered.
  struct rlimit noCore = {0, 0};
  if (syscall(SYS_prlimit64, 0, RLIMIT_CORE, &noCore, nullptr) < 0) ChildFail(a, kCore);

  // Raw calls: glibc's setuid would signal every thread of the parent.
  if (a->credentials) {
    if (syscall(SYS_setgroups, 0, nullptr) < 0) ChildFail(a, kSetgroups);
    if (syscall(SYS_setgid, a->gid) < 0) ChildFail(a, kSetgid);
    if (syscall(SYS_setuid, a->uid) < 0) ChildFail(a, kSetuid);
  }
  // A credential change leaves us non-dumpable, which makes /proc/self/uid_map
  // root-owned and bwrap's uid map write fail with EPERM.
  if (syscall(SYS_prctl, PR_SET_DUMPABLE, 1, 0, 0, 0) < 0) ChildFail(a, kDumpable);
  // After setuid, which clears it. Tied to the cloning thread, which lives as
  // long as the process.
  if (syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) ChildFail(a, kPdeathsig);
  // The parent may have died before the line above took effect.
  if (syscall(SYS_getppid) != a->parentPid) {
    errno = ESRCH;
    ChildFail(a, kParentGone);
  }

  // Landlock (network rules, scopes), last: bwrap and every process of the
  // sandbox inherit the domain, and none can leave it. no_new_privs is what
  // lets an unprivileged process restrict itself; bwrap sets it for the app anyway.
  if (a->landlockFd >= 0) {
    if (syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) ChildFail(a, kNoNewPrivs);
    if (syscall(SYS_landlock_restrict_self, a->landlockFd, 0) < 0) ChildFail(a, kLandlock);
  }

  syscall(SYS_execve, a->file, a->argv, a->envp);
  ChildFail(a, kExec);
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
    case kPdeathsig: return "prctl(PR_SET_PDEATHSIG)";
    case kParentGone: return "getppid";
    case kNoNewPrivs: return "prctl(PR_SET_NO_NEW_PRIVS)";
    case kLandlock: return "landlock_restrict_self";
    case kExec: return "execve";
    default: return "spawn";
  }
}

// The child's stack, one per spawning thread, kept for the thread's life: an
// munmap per spawn would cost a TLB shootdown across every thread of Node.
// One spawn at a time per thread: the vfork keeps this thread waiting until
// the child has exec'd or exited, and only then is the stack free again.
void* ThreadStack(size_t size) {
  static thread_local void* stack = MAP_FAILED;
  if (stack == MAP_FAILED)
    stack = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  return stack;
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

}  // namespace

bool Spawn(const SpawnRequest& req, SpawnResult* out, SpawnError* error) {
  constexpr size_t kStackSize = 256 * 1024;
  constexpr size_t kMaxFds = 64;

  auto fail = [&](const char* syscallName, std::string subject, int err) {
    error->err = err;
    error->syscall = syscallName;
    error->subject = std::move(subject);
    return false;
  };
  if (req.extraFds.size() + req.cgroupEnter.size() + 5 > kMaxFds) {
    if (req.closeBeforeClone >= 0) close(req.closeBeforeClone);
    return fail("spawn", "too many extra fds", E2BIG);
  }

  // The worker's cgroup (native/cgroup.cc): its limits set, and open what the
  // child enters it through; closed on every path out of here.
  CgroupFds cgroup;
  if (!CgroupPrepare(req, &cgroup, error)) {
    if (req.closeBeforeClone >= 0) close(req.closeBeforeClone);
    return false;
  }

  // The Landlock ruleset is built here, off the JS thread (a few syscalls);
  // the child only enters it. Ours to close once the child has exec'd.
  int rulesetFd = -1;
  if (req.landlock.enabled) {
    int err = 0;
    const char* step = nullptr;
    rulesetFd = CreateLandlockRuleset(req.landlock, &err, &step);
    if (rulesetFd < 0) {
      if (req.closeBeforeClone >= 0) close(req.closeBeforeClone);
      return fail(step, "", err);
    }
  }

  // The child's data fd (bwrap's --args: the app's environment), made here
  // off the JS thread; ours to close once the child has exec'd.
  int memfd = -1;
  if (req.memfdTarget >= 0) {
    MemfdResult made = SealedMemfd("procyard-args", req.memfdData.data(), req.memfdData.size());
    if (made.fd < 0) {
      if (req.closeBeforeClone >= 0) close(req.closeBeforeClone);
      if (rulesetFd >= 0) close(rulesetFd);
      return fail(made.step, "memfd", made.err);
    }
    memfd = made.fd;
  }

  std::vector<char*> argv = CStringArray(req.argv);
  std::vector<char*> envp = CStringArray(req.envp);

  int outPipe[2] = {-1, -1}, errPipe[2] = {-1, -1}, devNull = -1;
  void* stack = MAP_FAILED;
  int pidfd = -1;
  pid_t pid = -1;
  int savedErrno = 0;
  const char* failedCall = nullptr;

  if (pipe2(outPipe, O_CLOEXEC) < 0 || pipe2(errPipe, O_CLOEXEC) < 0) {
    failedCall = "pipe2";
  } else if ((devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
    failedCall = "open(/dev/null)";
  } else {
    stack = ThreadStack(kStackSize);
    if (stack == MAP_FAILED) failedCall = "mmap";
  }
  if (failedCall) {
    savedErrno = errno;
    if (req.closeBeforeClone >= 0) close(req.closeBeforeClone);
  }

  ChildArgs args{};
  FdMapping fds[kMaxFds];
  if (!failedCall) {
    fds[0] = {devNull, 0};
    fds[1] = {outPipe[1], 1};
    fds[2] = {errPipe[1], 2};
    int maxTarget = 2;
    for (size_t i = 0; i < req.extraFds.size(); i++) {
      fds[3 + i] = req.extraFds[i];
      maxTarget = std::max(maxTarget, req.extraFds[i].target);
    }
    // The cgroup fds go through the shuffle above every other target, for
    // the child to write and close.
    size_t nfds = 3 + req.extraFds.size();
    if (memfd >= 0) {
      fds[nfds++] = {memfd, req.memfdTarget};
      maxTarget = std::max(maxTarget, req.memfdTarget);
    }
    args.cgroupFdBase = maxTarget + 1;
    args.nCgroupFds = cgroup.enter.size();
    for (int fd : cgroup.enter) fds[nfds++] = {fd, ++maxTarget};
    args.setNproc = req.nprocLimit >= 0;
    args.nproc.rlim_cur = args.nproc.rlim_max = static_cast<rlim_t>(req.nprocLimit);
    args.landlockFd = -1;
    if (rulesetFd >= 0) {
      // Kept O_CLOEXEC in the child: the sandbox never sees the ruleset.
      args.landlockFd = ++maxTarget;
      fds[nfds++] = {rulesetFd, args.landlockFd, true};
    }
    args.file = req.file.c_str();
    args.argv = argv.data();
    args.envp = envp.data();
    args.fds = fds;
    args.nfds = nfds;
    args.maxTarget = maxTarget;
    args.dupBase = maxTarget + 1;
    args.credentials = req.hasCredentials;
    args.uid = req.uid;
    args.gid = req.gid;
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
    if (req.closeBeforeClone >= 0) {
      shutdown(req.closeBeforeClone, SHUT_RDWR);
      close(req.closeBeforeClone);
    }
    char* top = static_cast<char*>(stack) + kStackSize;
    // cgroup v2: born in its cgroup (native/cgroup.cc says why); where the
    // kernel refuses, the plain clone below, and the child enters by a write.
    if (cgroup.dir >= 0) {
      args.bornInCgroup = true;
      pid = CloneIntoCgroup(ChildMain, stack, kStackSize, CLONE_VM | CLONE_VFORK | CLONE_PIDFD, &args,
                            cgroup.dir, &pidfd);
      args.bornInCgroup = pid > 0;
    }
    if (pid < 0) pid = clone(ChildMain, top, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &args, &pidfd);
    if (pid < 0 && errno == EINVAL) {
      // Kernel without CLONE_PIDFD (< 5.2): open the pidfd after the fact.
      pidfd = -1;
      pid = clone(ChildMain, top, CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
      if (pid > 0) pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
    }
    savedErrno = errno;
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (pid < 0) failedCall = "clone";
  }

  // The child has exec'd or exited: its copies of these are its own now.
  CloseIfOpen(&outPipe[1]);
  CloseIfOpen(&errPipe[1]);
  CloseIfOpen(&devNull);
  CloseIfOpen(&rulesetFd);
  CloseIfOpen(&memfd);

  if (!failedCall && args.failStep != kNone) {
    // The child never reached the program: reap it here, nobody else will.
    siginfo_t info;
    if (pidfd >= 0) {
      waitid(static_cast<idtype_t>(P_PIDFD), pidfd, &info, WEXITED);
    } else {
      waitpid(pid, nullptr, 0);
    }
    CloseIfOpen(&pidfd);
    CloseIfOpen(&outPipe[0]);
    CloseIfOpen(&errPipe[0]);
    std::string subject;
    switch (args.failStep) {
      case kExec: subject = req.file; break;
      case kSetuid: subject = std::to_string(req.uid); break;
      case kSetgid: subject = std::to_string(req.gid); break;
      case kCgroup: subject = req.cgroupEnter[args.failIndex]; break;
      default: break;
    }
    return fail(StepSyscall(args.failStep), subject, args.failErrno);
  }
  if (!failedCall && pidfd < 0) {
    // Without a pidfd we could neither watch nor signal it safely.
    savedErrno = errno;
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    failedCall = "pidfd_open";
  }
  if (failedCall) {
    CloseIfOpen(&outPipe[0]);
    CloseIfOpen(&errPipe[0]);
    return fail(failedCall, "", savedErrno);
  }

  out->pid = pid;
  out->pidfd = pidfd;
  out->stdoutFd = outPipe[0];
  out->stderrFd = errPipe[0];
  return true;
}

}  // namespace procyard
