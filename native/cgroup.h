// cgroups, the parent's side: make a worker's cgroup and set its limits
// before the clone. No napi here, only Linux. The child's side, entering
// the cgroup, is one step of ChildMain (spawn.cc).
#pragma once

#include <string>
#include <vector>

#include "spawn.h"

namespace procyard {

// Makes the dirs (one per v1 hierarchy, or one for v2) and writes the
// limits. On failure the dirs it made are removed.
bool CgroupCreate(const std::vector<std::string>& dirs, const std::vector<CgroupWrite>& writes, SpawnError* error);

// Writes each value to its file (open, write, close); stops at the first failure.
bool CgroupWriteAll(const std::vector<CgroupWrite>& writes, SpawnError* error);

// rmdir of each dir, deepest first as given; the dirs still busy (processes
// inside, EBUSY) go to *busy. Fails on any other error but ENOENT.
bool CgroupRemove(const std::vector<std::string>& dirs, std::vector<std::string>* busy, SpawnError* error);

// What a spawn enters its cgroup through, open; closed when it goes.
struct CgroupFds {
  std::vector<int> enter;  // SpawnRequest::cgroupEnter, O_WRONLY
  int dir = -1;            // SpawnRequest::cgroupDir, O_DIRECTORY
  CgroupFds() = default;
  CgroupFds(const CgroupFds&) = delete;
  CgroupFds& operator=(const CgroupFds&) = delete;
  ~CgroupFds();
};

// The parent's part of a spawn's cgroup: writes the limits that differ from
// those the cgroup was made with, then opens what the child enters through.
bool CgroupPrepare(const SpawnRequest& req, CgroupFds* fds, SpawnError* error);

// clone3(CLONE_INTO_CGROUP | flags) running fn(arg) on [stack, stack + size):
// the child is born in the v2 cgroup of cgroupFd. Entering a cgroup by a
// write to cgroup.procs instead takes the kernel's threadgroup rwsem for
// writing, which waits out an RCU grace period (measured here: 1-13 ms)
// whenever no other migration happened in the last one. (v1 has no clone3
// into a cgroup, but its `tasks` file moves the writing thread alone
// without that lock: ~30 us.) Returns the pid (and the
// pidfd in *pidfd), or -1 with errno (ENOSYS where the kernel or this
// architecture has no clone3: then clone and write).
pid_t CloneIntoCgroup(int (*fn)(void*), void* stack, size_t size, unsigned long long flags, void* arg,
                      int cgroupFd, int* pidfd);

}  // namespace procyard
