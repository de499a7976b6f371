// cgroups, the parent's side (see cgroup.h). Runs on a libuv pool thread:
// a cgroup mkdir costs tens of microseconds of kernel work per hierarchy.
#include "cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef __NR_clone3
#define __NR_clone3 435
#endif

// clone3 with a child stack needs a few instructions of assembly (as glibc's
// own clone does): the child starts on its new stack with nothing to return
// to, so it must call fn and exit right there.
// procyard_clone3(args, size, fn, arg): the parent gets the pid or -errno.
#if defined(__x86_64__)
__asm__(
    ".text\n"
    ".globl procyard_clone3\n"
    ".hidden procyard_clone3\n"
    ".type procyard_clone3,@function\n"
    "procyard_clone3:\n"
    "  mov %rcx, %r8\n"        // arg: r8 survives the syscall (rcx does not)
    "  mov $435, %eax\n"       // __NR_clone3
    "  syscall\n"
    "  test %rax, %rax\n"
    "  jz 1f\n"
    "  ret\n"                  // parent: pid, or -errno
    "1:\n"
    "  xor %ebp, %ebp\n"       // child: the outermost frame
    "  and $-16, %rsp\n"
    "  mov %r8, %rdi\n"
    "  call *%rdx\n"           // fn (rdx survives the syscall too)
    "  mov %eax, %edi\n"
    "  mov $60, %eax\n"        // __NR_exit
    "  syscall\n"
    "  hlt\n"
    ".size procyard_clone3, .-procyard_clone3\n");
#define PROCYARD_HAVE_CLONE3 1
#elif defined(__aarch64__)
__asm__(
    ".text\n"
    ".globl procyard_clone3\n"
    ".hidden procyard_clone3\n"
    ".type procyard_clone3,%function\n"
    "procyard_clone3:\n"
    "  mov x8, #435\n"         // __NR_clone3
    "  svc #0\n"
    "  cbz x0, 1f\n"
    "  ret\n"                  // parent: pid, or -errno
    "1:\n"
    "  mov x29, #0\n"          // child: the outermost frame
    "  mov x30, #0\n"
    "  mov x0, x3\n"           // arg
    "  blr x2\n"               // fn
    "  mov x8, #93\n"          // __NR_exit
    "  svc #0\n"
    ".size procyard_clone3, .-procyard_clone3\n");
#define PROCYARD_HAVE_CLONE3 1
#endif

#ifdef PROCYARD_HAVE_CLONE3
extern "C" long procyard_clone3(void* args, size_t size, int (*fn)(void*), void* arg);
#endif

namespace procyard {
namespace {

bool Fail(SpawnError* error, const char* syscallName, const std::string& subject) {
  error->err = errno;
  error->syscall = syscallName;
  error->subject = subject;
  return false;
}

}  // namespace

bool CgroupWriteAll(const std::vector<CgroupWrite>& writes, SpawnError* error) {
  for (const CgroupWrite& w : writes) {
    int fd = open(w.path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return Fail(error, "open", w.path);
    // cgroup files take a value in one write; a short write is a refusal.
    ssize_t n = write(fd, w.value.data(), w.value.size());
    if (n != static_cast<ssize_t>(w.value.size())) {
      if (n >= 0) errno = EIO;
      int saved = errno;
      close(fd);
      errno = saved;
      return Fail(error, "write", w.path + " <- " + w.value);
    }
    close(fd);
  }
  return true;
}

bool CgroupCreate(const std::vector<std::string>& dirs, const std::vector<CgroupWrite>& writes, SpawnError* error) {
  std::vector<std::string> made;
  bool ok = true;
  for (const std::string& dir : dirs) {
    if (mkdir(dir.c_str(), 0755) < 0) {
      ok = Fail(error, "mkdir", dir);
      break;
    }
    made.push_back(dir);
  }
  if (ok) ok = CgroupWriteAll(writes, error);
  if (ok) return true;
  // Nothing has entered these cgroups yet, so they are empty and rmdir works.
  for (auto it = made.rbegin(); it != made.rend(); ++it) rmdir(it->c_str());
  return false;
}

bool CgroupRemove(const std::vector<std::string>& dirs, std::vector<std::string>* busy, SpawnError* error) {
  for (const std::string& dir : dirs) {
    if (rmdir(dir.c_str()) == 0 || errno == ENOENT) continue;
    if (errno != EBUSY) return Fail(error, "rmdir", dir);
    busy->push_back(dir);
  }
  return true;
}

CgroupFds::~CgroupFds() {
  for (int fd : enter) close(fd);
  if (dir >= 0) close(dir);
}

bool CgroupPrepare(const SpawnRequest& req, CgroupFds* fds, SpawnError* error) {
  if (!CgroupWriteAll(req.cgroupWrites, error)) return false;
  for (const std::string& file : req.cgroupEnter) {
    int fd = open(file.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return Fail(error, "open", file);
    fds->enter.push_back(fd);
  }
  if (!req.cgroupDir.empty() && (fds->dir = open(req.cgroupDir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
    return Fail(error, "open", req.cgroupDir);
  return true;
}

pid_t CloneIntoCgroup(int (*fn)(void*), void* stack, size_t size, unsigned long long flags, void* arg,
                      int cgroupFd, int* pidfd) {
#ifdef PROCYARD_HAVE_CLONE3
  // struct clone_args of Linux 5.7 (CLONE_ARGS_SIZE_VER2), declared here for
  // older headers.
  struct {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
  } args = {};
  args.flags = flags | CLONE_INTO_CGROUP;
  args.pidfd = reinterpret_cast<uintptr_t>(pidfd);
  args.exit_signal = SIGCHLD;
  args.stack = reinterpret_cast<uintptr_t>(stack);
  args.stack_size = size;
  args.cgroup = static_cast<uint64_t>(cgroupFd);
  long rc = procyard_clone3(&args, sizeof args, fn, arg);
  if (rc < 0) {
    errno = static_cast<int>(-rc);
    return -1;
  }
  return static_cast<pid_t>(rc);
#else
  (void)fn, (void)stack, (void)size, (void)flags, (void)arg, (void)cgroupFd, (void)pidfd;
  errno = ENOSYS;
  return -1;
#endif
}

}  // namespace procyard
