#include "probe.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

namespace procyard {
namespace {

struct ProbeArgs {
  bool credentials;
  uid_t uid;
  gid_t gid;
  char uidMap[64];
  int mapLen;
  volatile int failErrno;
  const char* volatile failStep;
};

[[noreturn]] void ProbeFail(ProbeArgs* a, const char* step) {
  a->failErrno = errno;
  a->failStep = step;
  syscall(SYS_exit_group, 1);
  __builtin_unreachable();
}

int WriteFile(const char* path, const char* data, int len) {
  int fd = static_cast<int>(syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CLOEXEC));
  if (fd < 0) return -1;
  long n = syscall(SYS_write, fd, data, len);
  int saved = errno;
  syscall(SYS_close, fd);
  errno = saved;
  return n == len ? 0 : -1;
}

// Runs in a CLONE_VM child: raw system calls only.
int ProbeChild(void* arg) {
  ProbeArgs* a = static_cast<ProbeArgs*>(arg);
  if (a->credentials) {
    if (syscall(SYS_setgroups, 0, nullptr) < 0) ProbeFail(a, "setgroups");
    if (syscall(SYS_setgid, a->gid) < 0) ProbeFail(a, "setgid");
    if (syscall(SYS_setuid, a->uid) < 0) ProbeFail(a, "setuid");
    // Non-dumpable after setuid: /proc/self/uid_map would be root's to write.
    if (syscall(SYS_prctl, PR_SET_DUMPABLE, 1, 0, 0, 0) < 0) ProbeFail(a, "prctl(PR_SET_DUMPABLE)");
  }
  if (syscall(SYS_unshare, CLONE_NEWUSER | CLONE_NEWNS) < 0)
    ProbeFail(a, "unshare(CLONE_NEWUSER|CLONE_NEWNS)");
  if (WriteFile("/proc/self/uid_map", a->uidMap, a->mapLen) < 0)
    ProbeFail(a, "write(/proc/self/uid_map)");
  // AppArmor's unprivileged_userns profile lets the namespace be made but
  // strips its capabilities: the first mount is where bwrap then fails.
  if (syscall(SYS_mount, "none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0)
    ProbeFail(a, "mount(MS_PRIVATE)");
  syscall(SYS_exit_group, 0);
  return 0;
}

}  // namespace

UsernsProbeResult ProbeUserNamespace(bool credentials, uid_t uid, gid_t gid) {
  UsernsProbeResult result;
  constexpr size_t kStackSize = 64 * 1024;
  ProbeArgs args{};
  args.credentials = credentials;
  args.uid = uid;
  args.gid = gid;
  uid_t inner = credentials ? uid : getuid();
  args.mapLen = snprintf(args.uidMap, sizeof args.uidMap, "0 %u 1\n", inner);
  void* stack = mmap(nullptr, kStackSize, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) {
    result.err = errno;
    result.step = "mmap";
    return result;
  }
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t pid = clone(ProbeChild, static_cast<char*>(stack) + kStackSize,
                    CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
  int cloneErr = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  munmap(stack, kStackSize);
  if (pid < 0) {
    result.err = cloneErr;
    result.step = "clone";
    return result;
  }
  int status = 0;
  while (waitpid(pid, &status, __WALL) < 0 && errno == EINTR) {
  }
  if (args.failStep != nullptr) {
    result.err = args.failErrno;
    result.step = args.failStep;
    return result;
  }
  result.ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (!result.ok) result.step = "probe child";
  return result;
}

bool ProbePidfd(int* err) {
  int fd = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
  if (fd < 0) {
    *err = errno;
    return false;
  }
  long rc = syscall(SYS_pidfd_send_signal, fd, 0, nullptr, 0);
  *err = rc < 0 ? errno : 0;
  close(fd);
  return rc == 0;
}

std::string KernelRelease() {
  struct utsname u;
  if (uname(&u) < 0) return "";
  return u.release;
}

}  // namespace procyard
