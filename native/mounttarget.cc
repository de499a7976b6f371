#include "mounttarget.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <deque>
#include <vector>

namespace procyard {
namespace {

std::deque<std::string> Components(const std::string& path) {
  std::deque<std::string> out;
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string::npos) slash = path.size();
    if (slash > start) out.push_back(path.substr(start, slash - start));
    start = slash + 1;
  }
  return out;
}

std::string Join(const std::vector<std::string>& parts) {
  std::string out;
  for (const std::string& p : parts) out += "/" + p;
  return out.empty() ? "/" : out;
}

std::string Octal(mode_t mode) {
  char buf[8];
  snprintf(buf, sizeof buf, "%04o", mode & 07777);
  return buf;
}

// Why a worker could change entries of this directory, or "" when none can.
std::string WorkerWritable(const struct stat& st, const TargetPolicy& p) {
  if (!p.guardWorkers) return "";
  if (st.st_uid >= p.workerUidStart && st.st_uid <= p.workerUidEnd)
    return "is owned by worker uid " + std::to_string(st.st_uid);
  if ((st.st_mode & S_IWGRP) && st.st_gid == p.workerGid)
    return "is writable by the worker group (gid " + std::to_string(st.st_gid) + ", mode " + Octal(st.st_mode) + ")";
  if (!p.strangers) return "";
  // Any other owner could rename what is in it: a worker of another backend
  // on this host (its own UIDs, its own group) looks like any other user.
  if (st.st_uid != 0 && st.st_uid != p.trustedUid)
    return "is owned by uid " + std::to_string(st.st_uid) + " (not root or the server), who could swap what is in it";
  // Sticky and world-writable (/var/tmp): others' entries cannot be renamed
  // or removed, and each entry passed is checked in turn.
  if ((st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX))
    return "is writable by anyone (mode " + Octal(st.st_mode) + ")";
  return "";
}

// Reopens the real path `parts` from / (each component already checked).
int OpenParts(const std::vector<std::string>& parts) {
  int fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
  for (size_t i = 0; fd >= 0 && i < parts.size(); i++) {
    int next = openat(fd, parts[i].c_str(), O_PATH | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC);
    close(fd);
    fd = next;
  }
  return fd;
}

}  // namespace

TargetResult ResolveMountTarget(const std::string& path, const TargetPolicy& policy) {
  TargetResult out;
  std::deque<std::string> todo = Components(path);
  std::vector<std::string> done;  // the real path so far: no symlinks, every dir checked
  int dirfd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
  int links = 0;
  auto fail = [&](int err, std::string problem) {
    if (dirfd >= 0) close(dirfd);
    out.err = err;
    out.problem = std::move(problem);
    return out;
  };
  if (dirfd < 0) return fail(errno, "cannot open /");
  struct stat st;
  if (fstat(dirfd, &st) < 0) return fail(errno, "cannot stat /");
  std::string why = WorkerWritable(st, policy);
  if (!why.empty()) return fail(0, "/ " + why);

  while (!todo.empty()) {
    std::string name = todo.front();
    todo.pop_front();
    if (name == ".") continue;
    if (name == "..") {
      if (!done.empty()) done.pop_back();
      close(dirfd);
      dirfd = OpenParts(done);
      if (dirfd < 0) return fail(errno, "cannot reopen " + Join(done));
      continue;
    }
    const std::string here = Join(done) + (done.empty() ? "" : "/") + name;
    int fd = openat(dirfd, name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && policy.create) {
      // The parent was checked: no worker can have planted anything here.
      if (mkdirat(dirfd, name.c_str(), 0755) == 0) {
        out.created.push_back(here);
      } else if (errno != EEXIST) {
        return fail(errno, "cannot create " + here);
      }
      fd = openat(dirfd, name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
    }
    if (fd < 0) return fail(errno, here + (errno == ENOENT ? " does not exist" : " cannot be opened"));
    if (fstat(fd, &st) < 0) {
      int err = errno;
      close(fd);
      return fail(err, "cannot stat " + here);
    }
    if (S_ISLNK(st.st_mode)) {
      if (policy.noSymlinks) {
        close(fd);
        return fail(0, here + " is a symlink");
      }
      if (st.st_uid != 0 && st.st_uid != policy.trustedUid) {
        close(fd);
        return fail(0, here + " is a symlink owned by uid " + std::to_string(st.st_uid) +
                           " (only symlinks owned by root or the server's own uid are followed)");
      }
      char target[PATH_MAX];
      ssize_t n = readlinkat(fd, "", target, sizeof target - 1);
      int err = errno;
      close(fd);
      if (n < 0) return fail(err, "cannot read the symlink " + here);
      if (++links > 40) return fail(ELOOP, "too many symlinks in " + path);
      target[n] = '\0';
      std::deque<std::string> rest = Components(target);
      rest.insert(rest.end(), todo.begin(), todo.end());
      todo.swap(rest);
      if (target[0] == '/') {
        done.clear();
        close(dirfd);
        dirfd = OpenParts(done);
        if (dirfd < 0) return fail(errno, "cannot open /");
      }
      continue;
    }
    if (todo.empty() && policy.guardWorkers) {
      // The last entry's own directory was checked, but a sticky one that
      // others can write lets each owner rename their entries: one not owned
      // by root or the server could be swapped for a symlink after this walk.
      struct stat parent;
      if (fstat(dirfd, &parent) < 0) {
        int err = errno;
        close(fd);
        return fail(err, "cannot stat " + Join(done));
      }
      bool stranger = policy.strangers ? st.st_uid != 0 && st.st_uid != policy.trustedUid
                                       : st.st_uid >= policy.workerUidStart && st.st_uid <= policy.workerUidEnd;
      if ((parent.st_mode & S_ISVTX) && (parent.st_mode & (S_IWGRP | S_IWOTH)) && stranger) {
        close(fd);
        return fail(0, here + " is owned by uid " + std::to_string(st.st_uid) + " in a sticky directory others can write (mode " +
                           Octal(parent.st_mode) + "), so its owner could swap it");
      }
    }
    if (!todo.empty()) {
      if (!S_ISDIR(st.st_mode)) {
        close(fd);
        return fail(ENOTDIR, here + " is not a directory");
      }
      why = WorkerWritable(st, policy);
      if (!why.empty()) {
        close(fd);
        return fail(0, here + " " + why);
      }
    }
    close(dirfd);
    dirfd = fd;
    done.push_back(name);
  }
  close(dirfd);
  out.ok = true;
  out.path = Join(done);
  return out;
}

}  // namespace procyard
