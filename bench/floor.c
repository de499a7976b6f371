// The floor for procyard's native spawn: the same clone(CLONE_VM|CLONE_VFORK)
// child (session, signal reset, fd placement, credentials, prctls, exec) as
// native/spawn.cc, from plain C with no Node, no N-API, no thread pool.
//
//   floor RESIDENT_MB UID GID FILE ARG...
//
// Touches RESIDENT_MB of memory first, then reads counts from stdin, one a
// line: for each count K it spawns FILE K times one after the other and
// prints each spawn's time (ns, from the first pipe to clone's return, i.e.
// the child's exec) on its own line. The bench feeds it batches between its
// Node batches, so both see the same machine. The wait for the child's exit
// is outside the timing, as in the bench's Node paths. The environment given
// to this program is the child's; fd 3 in the child is /dev/null (bwrap's
// --json-status-fd). Credentials only when run as root.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
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

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: floor RESIDENT_MB UID GID FILE ARG...  (counts on stdin)\n");
    return 2;
  }
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
  a.file = argv[4];
  a.argv = &argv[4];
  a.credentials = getuid() == 0;
  a.uid = (uid_t)strtoul(argv[2], NULL, 10);
  a.gid = (gid_t)strtoul(argv[3], NULL, 10);
  a.parent = getpid();
  printf("ready\n");
  fflush(stdout);

  char line[64];
  while (fgets(line, sizeof line, stdin)) {
    long k = strtol(line, NULL, 10);
    if (k < 1 || k > 100000) {
      fprintf(stderr, "floor: a count must be 1..100000\n");
      return 2;
    }
    for (long i = 0; i < k; i++) {
      double ns = spawn_once(&a, status_fd);
      if (ns < 0) return 1;
      printf("%.0f\n", ns);
    }
    fflush(stdout);
  }
  return 0;
}
