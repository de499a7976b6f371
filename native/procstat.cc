#include "procstat.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace procyard {
namespace {

// Reads a small /proc file whole; empty when it is gone.
std::string ReadProcFile(const char* path) {
  std::string data;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return data;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return data;
}

void AppendChildren(pid_t pid, std::vector<pid_t>* queue) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", pid);
  DIR* dir = opendir(path);
  if (dir == nullptr) return;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
    char childrenPath[320];
    snprintf(childrenPath, sizeof childrenPath, "/proc/%d/task/%s/children", pid, entry->d_name);
    std::string list = ReadProcFile(childrenPath);
    const char* p = list.c_str();
    char* end = nullptr;
    for (long child = strtol(p, &end, 10); end != p; child = strtol(p, &end, 10)) {
      queue->push_back(static_cast<pid_t>(child));
      p = end;
    }
  }
  closedir(dir);
}

StatFields StatOf(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  StatFields st;
  if (!ParseStat(ReadProcFile(path), &st)) st.state = 'X';
  return st;
}

// The pid a pidfd names, from its fdinfo; -1 when it cannot be told.
pid_t PidOf(int pidfd) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", pidfd);
  std::string info = ReadProcFile(path);
  size_t at = info.find("\nPid:");
  return at == std::string::npos ? -1 : static_cast<pid_t>(strtol(info.c_str() + at + 5, nullptr, 10));
}

void Signal(int pidfd, int sig) { syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0); }

}  // namespace

void KillTreeAndReap(int pidfd, int waitMs) {
  auto waitEnd = [waitMs](int fd) {
    struct pollfd ended = {fd, POLLIN, 0};
    while (poll(&ended, 1, waitMs) < 0 && errno == EINTR) {
    }
  };
  pid_t pid = PidOf(pidfd);
  // Only a child of ours: the pidfd keeps its pid ours until we reap it, so
  // its children's list is its own.
  if (pid > 0 && StatOf(pid).ppid == getpid()) {
    // Stopped, it clones no more and reaps none of its children: their
    // pids stay theirs while they are killed.
    Signal(pidfd, SIGSTOP);
    for (int i = 0; i < waitMs; i++) {
      char state = StatOf(pid).state;
      if (state == 'T' || state == 't' || state == 'Z' || state == 'X') break;
      usleep(1000);
    }
    std::vector<pid_t> children;
    AppendChildren(pid, &children);
    std::vector<int> killed;
    for (pid_t child : children) {
      int fd = static_cast<int>(syscall(SYS_pidfd_open, child, 0));
      if (fd < 0) continue;
      if (StatOf(child).ppid == pid) {
        Signal(fd, SIGKILL);
        killed.push_back(fd);
      } else {
        close(fd);
      }
    }
    for (int fd : killed) {
      waitEnd(fd);
      close(fd);
    }
    // Let it reap them (a monitor then exits on its own), rather than leave
    // them to an init that may never reap. Without children it stays
    // stopped until killed: let run, it could clone one (a sandbox's init
    // before its parent-death signal is armed) that would outlive it.
    if (!killed.empty()) {
      Signal(pidfd, SIGCONT);
      waitEnd(pidfd);
    }
  }
  Signal(pidfd, SIGKILL);
  waitEnd(pidfd);
  siginfo_t info{};
  waitid(static_cast<idtype_t>(P_PIDFD), pidfd, &info, WEXITED | WNOHANG);
}

bool ParseStat(const std::string& line, StatFields* out) {
  size_t close = line.rfind(')');
  if (close == std::string::npos || close + 2 >= line.size()) return false;
  // Fields from 3 (state) on, split on single spaces.
  const char* p = line.c_str() + close + 2;
  out->state = *p;
  uint64_t values[22] = {0};
  int field = 3;
  while (*p && field < 25) {
    const char* space = strchr(p, ' ');
    if (field > 3) values[field - 3] = strtoull(p, nullptr, 10);
    if (space == nullptr) break;
    p = space + 1;
    field++;
  }
  if (field < 24) return false;
  out->ppid = static_cast<pid_t>(values[1]);
  out->utime = values[11];
  out->stime = values[12];
  out->cutime = values[13];
  out->cstime = values[14];
  out->starttime = values[19];
  out->rssPages = values[21];
  return true;
}

std::vector<pid_t> TreePids(pid_t root, size_t limit) {
  std::vector<pid_t> pids(1, root);
  for (size_t q = 0; q < pids.size() && pids.size() < limit; q++) AppendChildren(pids[q], &pids);
  if (pids.size() > limit) pids.resize(limit);
  return pids;
}

std::vector<TreeSample> SampleTrees(const std::vector<pid_t>& roots) {
  static const long pageSize = sysconf(_SC_PAGESIZE);
  std::vector<TreeSample> samples(roots.size());
  for (size_t i = 0; i < roots.size(); i++) {
    TreeSample& sample = samples[i];
    std::vector<pid_t> tree = TreePids(roots[i], 100000);
    for (size_t q = 0; q < tree.size(); q++) {
      pid_t pid = tree[q];
      char path[64];
      snprintf(path, sizeof path, "/proc/%d/stat", pid);
      StatFields stat;
      if (!ParseStat(ReadProcFile(path), &stat)) continue;  // exited meanwhile
      if (q == 0) sample.alive = stat.state != 'Z' && stat.state != 'X';
      if (q == 0 && !sample.alive) break;
      sample.rssBytes += stat.rssPages * static_cast<uint64_t>(pageSize);
      // Its own time and its reaped children's (counted once: a child's goes to its parent when reaped).
      sample.ticks += stat.utime + stat.stime + stat.cutime + stat.cstime;
      sample.pids.push_back(pid);
    }
  }
  return samples;
}

long ClockTicksPerSecond() { return sysconf(_SC_CLK_TCK); }

}  // namespace procyard
