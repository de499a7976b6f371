// Late binds into a running sandbox. A child, as the worker's fsuid, clones
// the trees in the host's mount namespace where the sources are, then enters
// the sandbox's namespace and mounts them. The child shares our memory
// (CLONE_VM) and runs while this thread waits (CLONE_VFORK), but has an
// fs_struct of its own: setns(CLONE_NEWNS) refuses a shared one, and this
// pool thread must stay in the host's view. Like spawn.cc's child it makes
// only raw system calls on data prepared before the clone: no malloc, no
// glibc wrappers (a lazily bound one resolves its symbol on our stack).
#include "mountinject.h"
#include "rawsyscall.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <memory>

// The new mount API (Linux 5.2, mount_setattr 5.12): the same numbers on
// every architecture; glibc < 2.36 names none of it.
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef OPEN_TREE_CLOEXEC
#define OPEN_TREE_CLOEXEC O_CLOEXEC
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#endif
#ifndef MOUNT_ATTR_NOSUID
#define MOUNT_ATTR_NOSUID 0x00000002
#endif
#ifndef MOUNT_ATTR_NODEV
#define MOUNT_ATTR_NODEV 0x00000004
#endif

namespace procyard {
namespace {

// The kernel's struct mount_attr, first version (MOUNT_ATTR_SIZE_VER0).
struct MountAttr {
  uint64_t attrSet;
  uint64_t attrClr;
  uint64_t propagation;
  uint64_t usernsFd;
};

// The child's frames are small (a few hundred bytes); the rest is headroom.
constexpr size_t kStackSize = 64 * 1024;


// What the child reads, all made before the clone, and where it reports.
struct ChildPlan {
  int pidfd;
  uid_t uid;
  gid_t gid;
  size_t count;
  const char* const* sources;  // per mount, a host path
  const MountAttr* attrs;      // per mount
  int* trees;                  // per mount: its detached tree (the child's fd)
  const char* const* targets;  // per mount
  // Every prefix of every target, outermost first, the target last; mount
  // i's are dirs[dirsEnd[i - 1] .. dirsEnd[i]).
  const char* const* dirs;
  const size_t* dirsEnd;
  // Set by a child that failed.
  const char* step;
  const char* subject;  // one of the strings above, or null
  int err;
  int mount;
  bool finished;  // every mount made
};

[[noreturn]] void ChildFail(ChildPlan* p, const char* step, long ret, const char* subject, size_t mount) {
  p->step = step;
  p->err = static_cast<int>(-ret);
  p->subject = subject;
  p->mount = static_cast<int>(mount);
  Sys(SYS_exit_group, 1);
  __builtin_unreachable();
}

int ChildMain(void* arg) {
  ChildPlan* p = static_cast<ChildPlan*>(arg);
  const size_t none = static_cast<size_t>(-1);
  long r;
  // Every path from here on is resolved as the worker: no supplementary
  // groups, its fsuid and fsgid (which also drops the file capabilities;
  // CAP_SYS_ADMIN for the mounts stays). So a source is reached only where
  // bwrap, which a cold worker's binds go through as the worker, reaches it
  // (not through a 0700 directory of root's); and mount points are made as
  // their owner: host root has no id in the user namespace that owns the
  // sandbox's /tmp tmpfs (mkdir there fails with EOVERFLOW), and a symlink
  // the sandbox planted on the path leads nowhere the sandbox could not
  // write itself. These calls change this task's credentials only (raw
  // system calls: glibc would apply them to every thread). setfsuid(-1)
  // reads the value back.
  if (Failed(r = Sys(SYS_setgroups, 0, 0))) ChildFail(p, "setgroups", r, nullptr, none);
  Sys(SYS_setfsgid, p->gid);
  Sys(SYS_setfsuid, p->uid);
  if (static_cast<uid_t>(Sys(SYS_setfsuid, -1)) != p->uid || static_cast<gid_t>(Sys(SYS_setfsgid, -1)) != p->gid)
    ChildFail(p, "setfsuid", -EPERM, nullptr, none);
  // The trees, cloned here in the host's mount namespace where the sources
  // are, with bwrap's bind flags (see MountInject).
  for (size_t i = 0; i < p->count; i++) {
    r = Sys(SYS_open_tree, AT_FDCWD, reinterpret_cast<long>(p->sources[i]), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
    if (Failed(r)) ChildFail(p, "open_tree", r, p->sources[i], i);
    p->trees[i] = static_cast<int>(r);
    r = Sys(SYS_mount_setattr, p->trees[i], reinterpret_cast<long>(""), AT_EMPTY_PATH | AT_RECURSIVE,
            reinterpret_cast<long>(&p->attrs[i]), sizeof(MountAttr));
    if (Failed(r)) ChildFail(p, "mount_setattr", r, p->sources[i], i);
  }
  // The kernel moves our root and cwd to the namespace's root: from here on
  // every path is the sandbox's.
  if (Failed(r = Sys(SYS_setns, p->pidfd, CLONE_NEWNS))) ChildFail(p, "setns", r, nullptr, none);
  // Our umask must not narrow the directories' 0755.
  Sys(SYS_umask, 0);
  for (size_t i = 0; i < p->count; i++) {
    for (size_t d = i == 0 ? 0 : p->dirsEnd[i - 1]; d < p->dirsEnd[i]; d++) {
      const char* dir = p->dirs[d];
      r = Sys(SYS_mkdirat, AT_FDCWD, reinterpret_cast<long>(dir), 0755);
      if (r == -EEXIST) continue;
      if (Failed(r)) ChildFail(p, "mkdir", r, dir, i);
      // The group too, where a set-group-id parent gave the directory its own.
      if (Failed(r = Sys(SYS_fchownat, AT_FDCWD, reinterpret_cast<long>(dir), p->uid, p->gid, 0)))
        ChildFail(p, "chown", r, dir, i);
    }
    r = Sys(SYS_move_mount, p->trees[i], reinterpret_cast<long>(""), AT_FDCWD, reinterpret_cast<long>(p->targets[i]),
            MOVE_MOUNT_F_EMPTY_PATH);
    if (Failed(r)) ChildFail(p, "move_mount", r, p->targets[i], i);
  }
  p->finished = true;
  Sys(SYS_exit_group, 0);
  __builtin_unreachable();
}

bool Fail(InjectError* error, const char* step, std::string subject, int err, int mount = -1) {
  error->err = err;
  error->step = step;
  error->subject = std::move(subject);
  error->mount = mount;
  return false;
}

// Closes what it holds when it goes, on every path out.
struct FdList {
  std::vector<int> fds;
  ~FdList() {
    for (int fd : fds) close(fd);
  }
  int Add(int fd) {
    fds.push_back(fd);
    return fd;
  }
};

}  // namespace

bool MountInject(pid_t pid, const std::vector<InjectMount>& mounts, uid_t uid, gid_t gid, InjectError* error) {
  FdList open;
  std::vector<const char*> sources;
  std::vector<MountAttr> attrs;
  std::vector<int> trees(mounts.size(), -1);
  for (const InjectMount& m : mounts) {
    sources.push_back(m.source.c_str());
    // bwrap's bind flags on every mount of the tree, and a slave as bwrap's
    // binds are (it makes / rslave first): what the host mounts under the
    // source later shows inside, nothing mounted inside reaches the host.
    attrs.push_back({MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (m.readOnly ? MOUNT_ATTR_RDONLY : 0u), 0, MS_SLAVE, 0});
  }
  // By pidfd: a pid reused since the caller looked cannot lend us its namespace.
  long pidfd = syscall(SYS_pidfd_open, pid, 0);
  if (pidfd < 0) return Fail(error, "pidfd_open", std::to_string(pid), errno);
  open.Add(static_cast<int>(pidfd));

  std::vector<std::string> dirs;
  std::vector<size_t> dirsEnd;
  for (const InjectMount& m : mounts) {
    for (size_t slash = m.target.find('/', 1); slash != std::string::npos; slash = m.target.find('/', slash + 1))
      dirs.push_back(m.target.substr(0, slash));
    dirs.push_back(m.target);
    dirsEnd.push_back(dirs.size());
  }
  std::vector<const char*> dirPtrs, targets;
  for (const std::string& d : dirs) dirPtrs.push_back(d.c_str());
  for (const InjectMount& m : mounts) targets.push_back(m.target.c_str());
  ChildPlan plan = {static_cast<int>(pidfd), uid, gid, mounts.size(), sources.data(), attrs.data(), trees.data(),
                    targets.data(), dirPtrs.data(), dirsEnd.data(), nullptr, nullptr, 0, -1, false};
  std::unique_ptr<char[]> stack(new char[kStackSize]);

  // A handler of ours must never run on the child's stack in our memory.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t child = clone(ChildMain, stack.get() + kStackSize, CLONE_VM | CLONE_VFORK | SIGCHLD, &plan);
  int cloneErrno = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (child < 0) return Fail(error, "clone", "", cloneErrno);
  // CLONE_VFORK: the child is gone by now and its report in `plan`; reap it.
  while (waitpid(child, nullptr, 0) < 0 && errno == EINTR) {
  }
  if (plan.step != nullptr) {
    std::string subject = plan.subject != nullptr ? plan.subject : std::to_string(pid);
    return Fail(error, plan.step, subject, plan.err, plan.mount);
  }
  // Killed before it was done (a SIGKILL from outside).
  if (!plan.finished) return Fail(error, "mount injection child", "", EINTR);
  return true;
}

}  // namespace procyard
