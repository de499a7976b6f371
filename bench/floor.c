// The floors for procyard's spawn, from plain C: no Node, no N-API, no
// thread pool. One process runs two kinds of spawn:
//
//  - "bare": the same clone(CLONE_VM|CLONE_VFORK) child as native/spawn.cc
//    (session, signal reset, fd placement, credentials, prctls, exec) around
//    the bare sandbox command (FILE ARG...). Kept as it was, for reference.
//  - "sandbox": the same sandbox a ProcessBackend starts with limits and the
//    network policy on (given by the options below), doing the work its
//    spawn does: a pipe holding bwrap's --args data at fd 5, one holding the
//    seccomp program at fd 4, bwrap's status pipe at fd 3, the
//    worker's Landlock ruleset, the per-worker cgroups entered by the child
//    before its UID switch, and no_new_privs + landlock_restrict_self last.
//
//   floor RESIDENT_MB UID GID [OPTION...] -- FILE ARG...
//
// Options (all for the "sandbox" kind; without sandbox-argv there is none):
//   sandbox-argv PATH   the sandbox's argv (argv[0] = the bwrap binary), NUL-separated
//   args-data PATH      the bytes bwrap reads from --args 5 (the app's env options)
//   seccomp PATH        the BPF program bwrap reads from --seccomp 4
//   landlock-port P     the worker's port: TCP bind allowed on P only
//   no-landlock         build no ruleset (networkPolicy 'off')
//   cgroup PARENT       a v1 hierarchy's parent cgroup; each spawn gets a fresh
//                       cgroup under it (repeat per hierarchy, in procyard's order)
//   write FILE VALUE    a limit written in the last cgroup's directory when made
//   reuse               the last cgroup's directory is made once and reused by
//                       every spawn (procyard's recycled v1 cpu directory)
//
// Touches RESIDENT_MB of memory first, prints "info ..." lines (what it
// does), "dir ..." lines (each cgroup directory it made, for the caller to
// check), then "ready". Then reads commands from stdin, one a line: "bare K"
// or "sandbox K" (a bare number = "bare K"); it runs K spawns one after the
// other and prints each spawn's time (ns) on its own line. Timed: from the
// first pipe to clone's return, i.e. the child's exec.
// Outside the timing, as procyard's backend does ahead (its spare cgroups) or
// after (the sandbox's exit): the cgroup mkdir and limit writes, the wait for
// the sandbox's exit and the rmdir. The `tasks` opens are timed: procyard's
// spawn call makes them. The environment given
// to this program is the child's; fd 3 of a bare child is /dev/null.
// Credentials only when run as root.
//
// Every cgroup it made is removed on every way out: EOF on stdin, a failed
// spawn, SIGINT/SIGTERM/SIGHUP, its parent's death (PDEATHSIG: SIGTERM),
// a broken stdout. The instance directory is named as a ProcessBackend
// names its own (procyard-<pid ns>-<pid>-<starttime>-<n>), so that should
// this process be SIGKILLed, the next backend's orphan sweep removes it.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

extern char** environ;

struct child_args {
  const char* file;
  char** argv;
  int fds[4];  // sources for targets 0..3
  int credentials;
  uid_t uid;
  gid_t gid;
  pid_t parent;
  volatile int failed;
};

struct kernel_sigaction {
  void (*handler)(int);
  unsigned long flags;
  void (*restorer)(void);
  uint64_t mask;
};

static int child_main(void* arg) {
  struct child_args* a = arg;
  if (syscall(SYS_setsid) < 0) goto fail;
  struct kernel_sigaction dfl = {SIG_DFL, 0, NULL, 0};
  for (int sig = 1; sig < 65; sig++) syscall(SYS_rt_sigaction, sig, &dfl, NULL, sizeof(uint64_t));
  uint64_t none = 0;
  if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof none) < 0) goto fail;
  int tmp[4];
  for (int i = 0; i < 4; i++)
    if ((tmp[i] = (int)syscall(SYS_fcntl, a->fds[i], F_DUPFD_CLOEXEC, 4)) < 0) goto fail;
  for (int i = 0; i < 4; i++)
    if (syscall(SYS_dup3, tmp[i], i, 0) < 0) goto fail;
  if (syscall(SYS_close_range, 4, ~0U, 0) < 0) goto fail;
  if (a->credentials) {
    if (syscall(SYS_setgroups, 0, NULL) < 0) goto fail;
    if (syscall(SYS_setgid, a->gid) < 0) goto fail;
    if (syscall(SYS_setuid, a->uid) < 0) goto fail;
  }
  if (syscall(SYS_prctl, PR_SET_DUMPABLE, 1, 0, 0, 0) < 0) goto fail;
  if (syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) goto fail;
  if (syscall(SYS_getppid) != a->parent) goto fail;
  syscall(SYS_execve, a->file, a->argv, environ);
fail:
  a->failed = errno ? errno : 1;
  syscall(SYS_exit_group, 127);
  return 127;
}

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* One spawn of a->file; returns its time in ns, or -1 after printing why. */
static double spawn_once(struct child_args* a, int status_fd) {
  const size_t stack_size = 256 * 1024;
  double t0 = now_ns();
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
    perror("floor: pipe2");
    return -1;
  }
  int dev_null = open("/dev/null", O_RDONLY | O_CLOEXEC);
  void* stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (dev_null < 0 || stack == MAP_FAILED) {
    perror("floor: open/mmap");
    return -1;
  }
  a->fds[0] = dev_null;
  a->fds[1] = out[1];
  a->fds[2] = err[1];
  a->fds[3] = status_fd;
  a->failed = 0;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int pidfd = -1;
  pid_t pid = clone(child_main, (char*)stack + stack_size, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, a, &pidfd);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  close(out[1]);
  close(err[1]);
  close(dev_null);
  munmap(stack, stack_size);
  double t1 = now_ns();
  if (pid < 0) {
    perror("floor: clone");
    return -1;
  }
  int wstatus = 0;
  waitpid(pid, &wstatus, 0);
  close(out[0]);
  close(err[0]);
  if (pidfd >= 0) close(pidfd);
  if (a->failed) {
    fprintf(stderr, "floor: child failed before exec: %s\n", strerror(a->failed));
    return -1;
  }
  if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
    fprintf(stderr, "floor: sandbox exited with status %d\n", wstatus);
    return -1;
  }
  return t1 - t0;
}

// ---- The "sandbox" kind: what ProcessBackend.spawn does, limits and policy on.

#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif
#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef MFD_ALLOW_SEALING
#define MFD_ALLOW_SEALING 0x0002U
#endif

#define MAX_CGROUPS 8
#define MAX_WRITES 4

// Set by SIGINT/SIGTERM/SIGHUP (and our parent's death): stop, clean up, exit.
static volatile sig_atomic_t stopping = 0;
static void on_stop(int sig) {
  (void)sig;
  stopping = 1;
}

struct cgroup_spec {
  const char* parent;
  char instance[512];  // <parent>/procyard-<pidns>-<pid>-<starttime>-<n>, made at start
  const char* write_file[MAX_WRITES];
  const char* write_value[MAX_WRITES];
  int nwrites;
  int reuse;            // one directory for every spawn (made at start)
  char dir[560];        // the current spawn's directory ("" = none)
  int tasks_fd;         // its `tasks`, opened by each spawn (as procyard's spawn call does); -1 = none
};

struct sandbox {
  int enabled;
  char** argv;          // argv[0] = file
  char* args_data;      // bwrap's --args bytes
  size_t args_size;
  char* seccomp_data;   // the program's bytes (procyard hands the builtin one over in a pipe)
  size_t seccomp_size;
  int landlock_abi;     // 0: none built
  int landlock_port;
  int use_landlock;
  struct cgroup_spec cg[MAX_CGROUPS];
  int ncg;
  long seq;
};

// The same child as ChildMain in native/spawn.cc, with its fd layout.
struct sandbox_child {
  const char* file;
  char** argv;
  int fds[16];       // sources, placed at targets 0..nfds-1
  int cloexec[16];
  int nfds;
  int cgroup_base;   // targets cgroup_base .. +ncgroup-1: `tasks` files to write "0" to
  int ncgroup;
  int landlock_fd;   // target of the ruleset, or -1
  int credentials;
  uid_t uid;
  gid_t gid;
  pid_t parent;
  volatile int failed;
  volatile int step;
};

static int sandbox_child_main(void* arg) {
  struct sandbox_child* a = arg;
  int step = 1;
  if (syscall(SYS_setsid) < 0) goto fail;
  step = 2;
  struct kernel_sigaction dfl = {SIG_DFL, 0, NULL, 0};
  for (int sig = 1; sig < 65; sig++)
    if (syscall(SYS_rt_sigaction, sig, &dfl, NULL, sizeof(uint64_t)) < 0 && errno != EINVAL) goto fail;
  uint64_t none = 0;
  step = 3;
  if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof none) < 0) goto fail;
  // Every source above all targets first, then each placed (dup3 clears O_CLOEXEC unless kept).
  step = 4;
  int tmp[16];
  for (int i = 0; i < a->nfds; i++)
    if ((tmp[i] = (int)syscall(SYS_fcntl, a->fds[i], F_DUPFD_CLOEXEC, a->nfds)) < 0) goto fail;
  for (int i = 0; i < a->nfds; i++)
    if (syscall(SYS_dup3, tmp[i], i, a->cloexec[i] ? O_CLOEXEC : 0) < 0) goto fail;
  step = 5;
  if (syscall(SYS_close_range, a->nfds, ~0U, 0) < 0) goto fail;
  // Into the worker's cgroups while still root: "0" to `tasks` moves this thread.
  step = 6;
  for (int i = 0; i < a->ncgroup; i++) {
    if (syscall(SYS_write, a->cgroup_base + i, "0", 1) < 0) goto fail;
    syscall(SYS_close, a->cgroup_base + i);
  }
  step = 7;
  struct rlimit no_core = {0, 0};
  if (syscall(SYS_prlimit64, 0, RLIMIT_CORE, &no_core, NULL) < 0) goto fail;
  step = 8;
  if (a->credentials) {
    if (syscall(SYS_setgroups, 0, NULL) < 0) goto fail;
    if (syscall(SYS_setgid, a->gid) < 0) goto fail;
    if (syscall(SYS_setuid, a->uid) < 0) goto fail;
  }
  step = 9;
  if (syscall(SYS_prctl, PR_SET_DUMPABLE, 1, 0, 0, 0) < 0) goto fail;
  if (syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) goto fail;
  if (syscall(SYS_getppid) != a->parent) goto fail;
  // Landlock last, as ChildMain: bwrap and the whole sandbox inherit the domain.
  step = 10;
  if (a->landlock_fd >= 0) {
    if (syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) goto fail;
    if (syscall(SYS_landlock_restrict_self, a->landlock_fd, 0) < 0) goto fail;
  }
  step = 11;
  syscall(SYS_execve, a->file, a->argv, environ);
fail:
  a->failed = errno ? errno : 1;
  a->step = step;
  syscall(SYS_exit_group, 127);
  return 127;
}

// The kernel's Landlock structs (as native/landlock.cc declares them).
struct ll_ruleset_attr {
  uint64_t handled_access_fs;
  uint64_t handled_access_net;  // ABI 4
  uint64_t scoped;              // ABI 6
};
struct ll_net_port_attr {
  uint64_t allowed_access;
  uint64_t port;
};

static int landlock_abi(void) {
  long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, 1U /* VERSION */);
  return abi < 0 ? 0 : (int)abi;
}

// NetworkPolicy.forWorker(port) under 'auto' with no allowedConnectPorts:
// TCP bind handled (ABI >= 4) with one rule for the worker's port, connect
// not handled, abstract-unix and signal scopes (ABI >= 6).
static int landlock_ruleset(const struct sandbox* s) {
  int tcp = s->landlock_abi >= 4, scopes = s->landlock_abi >= 6;
  struct ll_ruleset_attr attr = {0, tcp ? 1ULL /* BIND_TCP */ : 0, scopes ? 3ULL /* ABSTRACT_UNIX | SIGNAL */ : 0};
  size_t size = attr.scoped ? sizeof attr : offsetof(struct ll_ruleset_attr, scoped);
  int fd = (int)syscall(SYS_landlock_create_ruleset, &attr, size, 0);
  if (fd < 0) return -1;
  if (tcp) {
    struct ll_net_port_attr rule = {1ULL, (uint64_t)s->landlock_port};
    if (syscall(SYS_landlock_add_rule, fd, 2 /* NET_PORT */, &rule, 0) < 0) {
      int saved = errno;
      close(fd);
      errno = saved;
      return -1;
    }
  }
  return fd;
}

// native/spawn.cc's DataFd for what fits a pipe: the bytes written, the
// write end closed, the read end returned.
static int data_pipe(const char* data, size_t size) {
  int p[2];
  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) return -1;
  ssize_t n = size ? write(p[1], data, size) : 0;
  close(p[1]);
  if (n != (ssize_t)size) {
    close(p[0]);
    errno = EMSGSIZE;
    return -1;
  }
  fcntl(p[0], F_SETFL, 0);
  return p[0];
}


static int write_file(const char* path, const char* value) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = write(fd, value, strlen(value));
  int saved = errno;
  close(fd);
  if (n != (ssize_t)strlen(value)) {
    errno = n < 0 ? saved : EIO;
    return -1;
  }
  return 0;
}

// SIGKILLs what is left in a cgroup of ours (a sandbox's init tearing down
// after its monitor's exit), each pinned by a pidfd and re-checked first.
static char instance[128];  // our instance directories' name (procyard-...-900)

static void kill_tasks(const char* dir) {
  char path[600], line[32];
  snprintf(path, sizeof path, "%s/tasks", dir);
  FILE* f = fopen(path, "re");
  if (!f) return;
  while (fgets(line, sizeof line, f)) {
    pid_t pid = (pid_t)strtol(line, NULL, 10);
    if (pid <= 0) continue;
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) continue;
    // Still in this cgroup once pinned: not a recycled pid.
    char cg[64];
    snprintf(cg, sizeof cg, "/proc/%d/cgroup", pid);
    FILE* c = fopen(cg, "re");
    int inside = 0;
    const char* base = strrchr(dir, '/');
    size_t base_len = base ? strlen(base) : 0;
    if (c) {
      // A line "N:controller:<path>" whose path ends with this directory's name, under our instance.
      char buf[1024];
      while (!inside && fgets(buf, sizeof buf, c)) {
        size_t len = strcspn(buf, "\n");
        buf[len] = '\0';
        inside = base && len >= base_len && strcmp(buf + len - base_len, base) == 0 && strstr(buf, instance) != NULL;
      }
      fclose(c);
    }
    if (inside) syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
    close(pidfd);
  }
  fclose(f);
}

// rmdir, retried while processes are still leaving (EBUSY), then killing
// them; bounded at ~5 s. Returns 0 when the directory is gone.
static int remove_cgroup(const char* dir) {
  useconds_t wait = 0;
  for (int attempt = 0; attempt < 80; attempt++) {
    if (rmdir(dir) == 0 || errno == ENOENT) return 0;
    if (errno != EBUSY) break;
    if (attempt >= 12) kill_tasks(dir);
    usleep(wait);
    wait = wait == 0 ? 1000 : (wait * 2 > 100000 ? 100000 : wait * 2);
  }
  fprintf(stderr, "floor: cannot remove cgroup %s: %s\n", dir, strerror(errno));
  return -1;
}

// The directories of the next spawn, made ahead (outside the timing) with
// the limits written and `tasks` opened, as procyard's spare cgroups are.
static int cgroups_prepare(struct sandbox* s) {
  s->seq++;
  for (int i = 0; i < s->ncg; i++) {
    struct cgroup_spec* c = &s->cg[i];
    if (c->reuse && c->dir[0]) continue;
    if (c->reuse)
      snprintf(c->dir, sizeof c->dir, "%s/reused", c->instance);
    else
      snprintf(c->dir, sizeof c->dir, "%s/c%ld", c->instance, s->seq);
    if (mkdir(c->dir, 0755) < 0) {
      c->dir[0] = '\0';
      goto fail;
    }
    char path[700];
    for (int w = 0; w < c->nwrites; w++) {
      snprintf(path, sizeof path, "%s/%s", c->dir, c->write_file[w]);
      if (write_file(path, c->write_value[w]) < 0) {
        fprintf(stderr, "floor: write %s <- %s: %s\n", path, c->write_value[w], strerror(errno));
        return -1;
      }
    }
  }
  return 0;
fail:
  perror("floor: cgroup mkdir/open");
  return -1;
}

// After the sandbox's exit (outside the timing): its fresh cgroups removed.
static int cgroups_finish(struct sandbox* s, int all) {
  int ok = 0;
  for (int i = 0; i < s->ncg; i++) {
    struct cgroup_spec* c = &s->cg[i];
    if (c->tasks_fd >= 0) close(c->tasks_fd);
    c->tasks_fd = -1;
    if (!c->dir[0] || (c->reuse && !all)) continue;
    if (remove_cgroup(c->dir) < 0) ok = -1;
    c->dir[0] = '\0';
  }
  return ok;
}

static void close_if(int* fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

// Waits for pid; when told to stop meanwhile, kills it first (it dies with us
// anyway, but its cgroups can only go once it has).
static int wait_child(pid_t pid, int* wstatus) {
  for (;;) {
    if (waitpid(pid, wstatus, 0) == pid) return 0;
    if (errno != EINTR) return -1;
    if (stopping) kill(pid, SIGKILL);
  }
}

static char* stack_top(void) {
  // One stack kept for the process's life, as native/spawn.cc keeps one per thread.
  static char* stack = NULL;
  const size_t size = 256 * 1024;
  if (!stack) {
    void* p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (p == MAP_FAILED) return NULL;
    stack = p;
  }
  return stack + size;
}

/* One spawn of the sandbox; returns its time in ns, or -1 after printing why. */
static double sandbox_once(struct sandbox* s, const struct child_args* creds) {
  if (cgroups_prepare(s) < 0) return -1;
  int status[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
  int seccomp = -1, ruleset = -1, memfd = -1, dev_null = -1, pidfd = -1;
  pid_t pid = -1;
  const char* failed = NULL;
  struct sandbox_child a;
  memset(&a, 0, sizeof a);
  char* top = stack_top();

  double t0 = now_ns();
  // What procyard's spawn call does before its clone: bwrap's status pipe
  // (read end O_NONBLOCK), the seccomp program and the --args bytes each in
  // a pipe, the ruleset, the cgroups' `tasks` opened.
  if (pipe2(status, O_CLOEXEC) < 0 || fcntl(status[0], F_SETFL, O_NONBLOCK) < 0) failed = "status pipe";
  if (!failed && (seccomp = data_pipe(s->seccomp_data, s->seccomp_size)) < 0) failed = "seccomp pipe";
  if (!failed && s->use_landlock && (ruleset = landlock_ruleset(s)) < 0) failed = "landlock ruleset";
  if (!failed && (memfd = data_pipe(s->args_data, s->args_size)) < 0) failed = "args pipe";
  for (int i = 0; i < s->ncg && !failed; i++) {
    char tasks[600];
    snprintf(tasks, sizeof tasks, "%s/tasks", s->cg[i].dir);
    if ((s->cg[i].tasks_fd = open(tasks, O_WRONLY | O_CLOEXEC)) < 0) failed = "open tasks";
  }
  if (!failed && (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0)) failed = "pipe2";
  if (!failed && (dev_null = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) failed = "open /dev/null";
  if (!failed && !top) failed = "mmap";
  if (!failed) {
    // Targets: 0-2 stdio, 3 status, 4 seccomp, 5 --args, then the cgroups' `tasks`, then the ruleset (kept O_CLOEXEC).
    int src[] = {dev_null, out[1], err[1], status[1], seccomp, memfd};
    for (int i = 0; i < 6; i++) a.fds[a.nfds++] = src[i];
    a.cgroup_base = a.nfds;
    for (int i = 0; i < s->ncg; i++) a.fds[a.nfds++] = s->cg[i].tasks_fd;
    a.ncgroup = s->ncg;
    a.landlock_fd = -1;
    if (ruleset >= 0) {
      a.landlock_fd = a.nfds;
      a.cloexec[a.nfds] = 1;
      a.fds[a.nfds++] = ruleset;
    }
    a.file = s->argv[0];
    a.argv = s->argv;
    a.credentials = creds->credentials;
    a.uid = creds->uid;
    a.gid = creds->gid;
    a.parent = getpid();
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = clone(sandbox_child_main, top, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &a, &pidfd);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) failed = "clone";
  }
  // The child has exec'd (or failed): its copies are its own now.
  close_if(&out[1]);
  close_if(&err[1]);
  close_if(&status[1]);
  close_if(&dev_null);
  close_if(&seccomp);
  close_if(&ruleset);
  close_if(&memfd);
  for (int i = 0; i < s->ncg; i++) close_if(&s->cg[i].tasks_fd);
  double t1 = now_ns();

  int wstatus = 0;
  if (pid > 0) wait_child(pid, &wstatus);
  close_if(&out[0]);
  close_if(&err[0]);
  close_if(&status[0]);
  close_if(&pidfd);
  int removed = cgroups_finish(s, 0);
  if (failed) {
    perror(failed);
    return -1;
  }
  if (a.failed) {
    fprintf(stderr, "floor: sandbox child failed at step %d before exec: %s\n", a.step, strerror(a.failed));
    return -1;
  }
  if (stopping) return -1;
  if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
    fprintf(stderr, "floor: sandbox exited with status %d\n", wstatus);
    return -1;
  }
  if (removed < 0) return -1;
  return t1 - t0;
}

static char* read_all(const char* path, size_t* size) {
  FILE* f = fopen(path, "rbe");
  if (!f) return NULL;
  size_t cap = 4096, n = 0;
  char* buf = malloc(cap + 1);
  size_t got;
  while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
    n += got;
    if (n == cap) buf = realloc(buf, (cap *= 2) + 1);
  }
  fclose(f);
  if (buf) buf[n] = '\0';
  *size = n;
  return buf;
}

// A NUL-separated list as a NULL-terminated argv.
static char** split_nul(char* data, size_t size) {
  size_t count = 0;
  for (size_t i = 0; i < size; i++) count += data[i] == '\0';
  char** out = calloc(count + 1, sizeof *out);
  if (!out) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < size && k < count; i += strlen(data + i) + 1) out[k++] = data + i;
  return out;
}

// This process's instance name, as CgroupManager names a backend's: an
// orphan sweep of any backend removes it once we are gone.
static int instance_name(char* out, size_t size) {
  char ns[64], stat[1024];
  ssize_t n = readlink("/proc/self/ns/pid", ns, sizeof ns - 1);
  if (n < 0) return -1;
  ns[n] = '\0';
  unsigned long long inode = strtoull(strchr(ns, '[') ? strchr(ns, '[') + 1 : ns, NULL, 10);
  FILE* f = fopen("/proc/self/stat", "re");
  if (!f) return -1;
  size_t len = fread(stat, 1, sizeof stat - 1, f);
  fclose(f);
  stat[len] = '\0';
  // Field 22 (starttime), counted from the state after the last ')'.
  char* p = strrchr(stat, ')');
  if (!p) return -1;
  p += 2;
  for (int field = 3; field < 22 && p; field++) p = strchr(p, ' ') ? strchr(p, ' ') + 1 : NULL;
  if (!p) return -1;
  unsigned long long start = strtoull(p, NULL, 10);
  snprintf(out, size, "procyard-%llu-%d-%llu-900", inode, getpid(), start);
  return 0;
}

static struct sandbox sb;

// Every cgroup of ours, gone: reused and current directories, then the instances.
static int cleanup_cgroups(void) {
  int ok = cgroups_finish(&sb, 1);
  for (int i = 0; i < sb.ncg; i++) {
    if (sb.cg[i].instance[0] && remove_cgroup(sb.cg[i].instance) < 0) ok = -1;
    sb.cg[i].instance[0] = '\0';
  }
  return ok;
}

int main(int argc, char** argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: floor RESIDENT_MB UID GID [OPTION...] -- FILE ARG...  (commands on stdin)\n");
    return 2;
  }
  // Stop cleanly on a signal, on our parent's death, and on a closed stdout (EPIPE, not SIGPIPE).
  struct sigaction stop = {0};
  stop.sa_handler = on_stop;  // no SA_RESTART: a blocked read or wait returns EINTR
  sigaction(SIGINT, &stop, NULL);
  sigaction(SIGTERM, &stop, NULL);
  sigaction(SIGHUP, &stop, NULL);
  signal(SIGPIPE, SIG_IGN);
  pid_t parent = getppid();
  prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
  if (getppid() != parent) return 1;

  int i = 4;
  const char *argv_path = NULL, *args_path = NULL, *seccomp_path = NULL;
  sb.use_landlock = 1;
  for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
    const char* opt = argv[i];
    const char* v1 = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(opt, "sandbox-argv") && v1) argv_path = argv[++i];
    else if (!strcmp(opt, "args-data") && v1) args_path = argv[++i];
    else if (!strcmp(opt, "seccomp") && v1) seccomp_path = argv[++i];
    else if (!strcmp(opt, "landlock-port") && v1) sb.landlock_port = atoi(argv[++i]);
    else if (!strcmp(opt, "no-landlock")) sb.use_landlock = 0;
    else if (!strcmp(opt, "cgroup") && v1 && sb.ncg < MAX_CGROUPS) {
      sb.cg[sb.ncg].parent = argv[++i];
      sb.cg[sb.ncg].tasks_fd = -1;
      sb.ncg++;
    } else if (!strcmp(opt, "write") && i + 2 < argc && sb.ncg > 0 && sb.cg[sb.ncg - 1].nwrites < MAX_WRITES) {
      struct cgroup_spec* c = &sb.cg[sb.ncg - 1];
      c->write_file[c->nwrites] = argv[++i];
      c->write_value[c->nwrites++] = argv[++i];
    } else if (!strcmp(opt, "reuse") && sb.ncg > 0) {
      sb.cg[sb.ncg - 1].reuse = 1;
    } else {
      fprintf(stderr, "floor: bad option %s\n", opt);
      return 2;
    }
  }
  if (i + 1 >= argc) {
    fprintf(stderr, "floor: no FILE after --\n");
    return 2;
  }
  char** bare_argv = &argv[i + 1];

  size_t resident = (size_t)strtoull(argv[1], NULL, 10) << 20;
  if (resident > 0) {
    char* block = malloc(resident);
    if (!block) {
      perror("floor: malloc");
      return 1;
    }
    memset(block, 1, resident);  // touch every page: resident, not just reserved
  }
  int status_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (status_fd < 0) {
    perror("floor: open /dev/null");
    return 1;
  }
  struct child_args a;
  memset(&a, 0, sizeof a);
  a.file = bare_argv[0];
  a.argv = bare_argv;
  a.credentials = getuid() == 0;
  a.uid = (uid_t)strtoul(argv[2], NULL, 10);
  a.gid = (gid_t)strtoul(argv[3], NULL, 10);
  a.parent = getpid();

  int rc = 0;
  if (argv_path) {
    size_t n;
    char* text = read_all(argv_path, &n);
    sb.argv = text ? split_nul(text, n) : NULL;
    sb.args_data = args_path ? read_all(args_path, &sb.args_size) : NULL;
    size_t filter_size = 0;
    char* filter = seccomp_path ? read_all(seccomp_path, &filter_size) : NULL;
    if (!sb.argv || !sb.argv[0] || !sb.args_data || !filter) {
      fprintf(stderr, "floor: sandbox-argv, args-data and seccomp must name readable files\n");
      return 2;
    }
    sb.seccomp_data = filter;
    sb.seccomp_size = filter_size;
    if (filter_size > 65536) {
      fprintf(stderr, "floor: seccomp program larger than a pipe\n");
      return 1;
    }
    sb.enabled = 1;
    sb.landlock_abi = sb.use_landlock ? landlock_abi() : 0;
    sb.use_landlock = sb.landlock_abi > 0;
    if (sb.use_landlock)
      printf("info landlock ABI %d: %s%s\n", sb.landlock_abi,
             sb.landlock_abi >= 4 ? "TCP bind handled, one rule (the worker's port)" : "no TCP rules (ABI < 4)",
             sb.landlock_abi >= 6 ? ", abstract-unix-socket and signal scopes" : ", no scopes (ABI < 6)");
    else
      printf("info no Landlock ruleset (%s)\n", landlock_abi() > 0 ? "policy off" : "the kernel has no Landlock");
    char* name = instance;
    if (sb.ncg > 0 && instance_name(name, sizeof instance) < 0) {
      perror("floor: /proc/self");
      return 1;
    }
    for (int k = 0; k < sb.ncg; k++) {
      struct cgroup_spec* c = &sb.cg[k];
      snprintf(c->instance, sizeof c->instance, "%s/%s", c->parent, name);
      if (mkdir(c->instance, 0755) < 0) {
        fprintf(stderr, "floor: mkdir %s: %s\n", c->instance, strerror(errno));
        c->instance[0] = '\0';
        rc = 1;
        break;
      }
      printf("dir %s\n", c->instance);
      printf("info cgroup %s: %s", c->parent, c->reuse ? "one directory reused by every spawn" : "a fresh directory per spawn");
      for (int w = 0; w < c->nwrites; w++) printf("%s %s=%s", w ? "," : ";", c->write_file[w], c->write_value[w]);
      printf("\n");
    }
  }
  if (rc == 0) {
    printf("ready\n");
    if (fflush(stdout) != 0) rc = 1;
  }

  char line[64];
  while (rc == 0 && !stopping && fgets(line, sizeof line, stdin)) {
    int sandbox_kind = strncmp(line, "sandbox ", 8) == 0;
    const char* count = sandbox_kind ? line + 8 : (strncmp(line, "bare ", 5) == 0 ? line + 5 : line);
    long k = strtol(count, NULL, 10);
    if (k < 1 || k > 100000 || (sandbox_kind && !sb.enabled)) {
      fprintf(stderr, "floor: a command is \"bare K\" or \"sandbox K\" (K 1..100000; sandbox needs sandbox-argv)\n");
      rc = 2;
      break;
    }
    for (long j = 0; j < k && rc == 0 && !stopping; j++) {
      double ns = sandbox_kind ? sandbox_once(&sb, &a) : spawn_once(&a, status_fd);
      if (ns < 0) rc = 1;
      else if (printf("%.0f\n", ns) < 0) rc = 1;
    }
    if (fflush(stdout) != 0) rc = 1;
  }
  if (cleanup_cgroups() < 0 && rc == 0) rc = 1;
  return stopping && rc == 0 ? 130 : rc;
}
