// Mount targets on the host, resolved and created as root without trusting
// anything a worker could have written.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace procyard {

struct TargetPolicy {
  bool create = false;       // mkdir missing directories (0755)
  bool guardWorkers = false;  // as root: refuse directories workers can write
  uid_t workerUidStart = 0;
  uid_t workerUidEnd = 0;
  gid_t workerGid = 0;
  uid_t trustedUid = 0;       // besides root, the owner a followed symlink may have (the server's own uid)
  bool strangers = true;      // with guardWorkers: also refuse directories other users could write
  bool noSymlinks = false;    // refuse every symlink, whoever owns it (a tenant's content: its bundle)
};

struct TargetResult {
  bool ok = false;
  std::string path;     // the real path, symlinks resolved (when ok)
  std::vector<std::string> created;  // directories this call made, outermost first
  int err = 0;          // errno of the failure, 0 for a policy refusal
  std::string problem;  // what is wrong, naming the component (when !ok)
};

// Walks `path` from / with openat(O_PATH | O_NOFOLLOW): a symlink is followed
// only when it is owned by root or trustedUid, and every directory passed through
// must not be writable by a worker, nor may the last entry be another user's
// in a sticky directory others write, so no worker can redirect the walk (or
// bwrap's later mount) by planting or swapping an entry.
TargetResult ResolveMountTarget(const std::string& path, const TargetPolicy& policy);

}  // namespace procyard
