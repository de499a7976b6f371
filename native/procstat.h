// /proc readers for resource sampling, and ending a process tree: no napi here.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace procyard {

struct StatFields {
  char state = '?';
  pid_t ppid = 0;
  uint64_t utime = 0;  // clock ticks
  uint64_t stime = 0;
  uint64_t cutime = 0;  // of its children it has waited for (and theirs)
  uint64_t cstime = 0;
  uint64_t starttime = 0;
  uint64_t rssPages = 0;
};

// Parses one /proc/<pid>/stat line. The command name is split off at the
// last ')': it may itself hold spaces and parentheses.
bool ParseStat(const std::string& line, StatFields* out);

struct TreeSample {
  bool alive = false;  // root present and not a zombie
  uint64_t rssBytes = 0;
  uint64_t ticks = 0;  // utime + stime + cutime + cstime summed over the tree: the tree's CPU since it started,
                       // but for children that were never waited for (SIGCHLD ignored)
  std::vector<pid_t> pids;
};

// Walks each root's tree through /proc/<pid>/task/<tid>/children.
std::vector<TreeSample> SampleTrees(const std::vector<pid_t>& roots);

// The pids of root's tree, root first, at most `limit` of them.
std::vector<pid_t> TreePids(pid_t root, size_t limit);

long ClockTicksPerSecond();

// Kills the process behind pidfd and reaps it, waiting at most waitMs for
// its end. A child of ours is stopped first and its own children (a
// sandbox's init, whose pid namespace dies with it) killed before it: for a
// sandbox's monitor when no JS can run any more to end it the usual way.
void KillTreeAndReap(int pidfd, int waitMs);

}  // namespace procyard
