#include "sockdiag.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "procstat.h"

namespace procyard {
namespace {

constexpr int kTcpListen = 10;  // TCP_LISTEN in the kernel's state numbering

enum class Reach { kNone, kExact, kWildcard };

// Whether a connect to 127.0.0.1 could reach the listener: on its very
// address, or on a wildcard one. `v6only` from the message's attribute.
Reach LoopbackReach(const inet_diag_msg& m, bool v6only) {
  const uint32_t* a = m.id.idiag_src;  // network byte order
  if (m.id.idiag_if != 0 && m.id.idiag_if != 1) return Reach::kNone;  // bound to a device other than lo
  if (m.idiag_family == AF_INET)
    return a[0] == htonl(INADDR_LOOPBACK) ? Reach::kExact : a[0] == htonl(INADDR_ANY) ? Reach::kWildcard : Reach::kNone;
  if (a[0] != 0 || a[1] != 0) return Reach::kNone;
  if (a[2] == 0 && a[3] == 0) return v6only ? Reach::kNone : Reach::kWildcard;  // ::
  return a[2] == htonl(0x0000ffff) && a[3] == htonl(INADDR_LOOPBACK) ? Reach::kExact : Reach::kNone;  // ::ffff:127.0.0.1
}

// The IPV6_V6ONLY attribute sock_diag adds to an IPv6 socket's message.
bool V6Only(const nlmsghdr* h) {
  const inet_diag_msg* m = static_cast<const inet_diag_msg*>(NLMSG_DATA(h));
  int left = static_cast<int>(h->nlmsg_len - NLMSG_LENGTH(sizeof *m));
  for (const rtattr* attr = reinterpret_cast<const rtattr*>(m + 1); RTA_OK(attr, left); attr = RTA_NEXT(attr, left))
    if (attr->rta_type == INET_DIAG_SKV6ONLY && RTA_PAYLOAD(attr) >= 1) return *static_cast<const uint8_t*>(RTA_DATA(attr)) != 0;
  return false;
}

// One dump of `family`'s TCP listeners, the reachable ones appended to `exact` or `wildcard`.
bool DumpListeners(int fd, uint8_t family, uint16_t port, uint32_t seq, std::vector<Listener>* exact, std::vector<Listener>* wildcard, int* err) {
  // The port is matched by the kernel (a bytecode filter, as ss(8) uses), so
  // only the port's listeners come back: a tenant can hold tens of thousands
  // of SO_REUSEPORT listeners on its own port, and copying each of them out
  // for every health check cost ~0.1 s.
  struct {
    nlmsghdr nlh;
    inet_diag_req_v2 req;
    nlattr bytecodeAttr;
    inet_diag_bc_op bytecode[2];
  } request = {};
  static_assert(sizeof request == NLMSG_LENGTH(sizeof(inet_diag_req_v2)) + NLA_HDRLEN + 2 * sizeof(inet_diag_bc_op));
  request.nlh.nlmsg_len = sizeof request;
  request.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  request.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  request.nlh.nlmsg_seq = seq;
  request.req.sdiag_family = family;
  request.req.sdiag_protocol = IPPROTO_TCP;
  request.req.idiag_states = 1u << kTcpListen;
  // Source port == port: accept (jump to the end, 8); else reject (past it, 12).
  request.bytecodeAttr.nla_len = NLA_HDRLEN + sizeof request.bytecode;
  request.bytecodeAttr.nla_type = INET_DIAG_REQ_BYTECODE;
  request.bytecode[0] = {INET_DIAG_BC_S_EQ, sizeof request.bytecode, sizeof request.bytecode + 4};
  request.bytecode[1] = {0, 0, port};
  sockaddr_nl kernel = {};
  kernel.nl_family = AF_NETLINK;
  if (sendto(fd, &request, sizeof request, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0) {
    *err = errno;
    return false;
  }
  alignas(nlmsghdr) char buf[32768];
  // Bounded: a dump ends with NLMSG_DONE; a reply without it is an error.
  for (int reads = 0; reads < 100000; reads++) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      *err = errno;
      return false;
    }
    int left = static_cast<int>(n);
    for (nlmsghdr* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
      if (h->nlmsg_seq != seq) continue;
      if (h->nlmsg_type == NLMSG_DONE) return true;
      if (h->nlmsg_type == NLMSG_ERROR) {
        const nlmsgerr* e = static_cast<const nlmsgerr*>(NLMSG_DATA(h));
        *err = e->error < 0 ? -e->error : EPROTO;
        return false;
      }
      if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) continue;
      const inet_diag_msg* m = static_cast<const inet_diag_msg*>(NLMSG_DATA(h));
      if (m->idiag_state != kTcpListen || ntohs(m->id.idiag_sport) != port) continue;
      Reach reach = LoopbackReach(*m, m->idiag_family == AF_INET6 && V6Only(h));
      if (reach != Reach::kNone) (reach == Reach::kExact ? exact : wildcard)->push_back({m->idiag_uid, m->idiag_inode});
    }
  }
  *err = EPROTO;
  return false;
}

}  // namespace

bool LoopbackListeners(uint16_t port, std::vector<Listener>* listeners, int* err) {
  int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (fd < 0) {
    *err = errno;
    return false;
  }
  std::vector<Listener> exact, wildcard;
  bool ok = DumpListeners(fd, AF_INET, port, 1, &exact, &wildcard, err) && DumpListeners(fd, AF_INET6, port, 2, &exact, &wildcard, err);
  close(fd);
  if (ok) listeners->insert(listeners->end(), exact.empty() ? wildcard.begin() : exact.begin(), exact.empty() ? wildcard.end() : exact.end());
  return ok;
}

std::vector<uint64_t> SocketsHeldInTree(pid_t root, const std::vector<uint64_t>& inodes, size_t maxFds) {
  std::vector<uint64_t> wanted(inodes), found;
  std::sort(wanted.begin(), wanted.end());
  wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
  size_t budget = maxFds;
  // A process per fd read at least: the pids limit bounds a sandbox's tree well below this.
  for (pid_t pid : TreePids(root, maxFds)) {
    if (wanted.empty() || budget == 0) break;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    int dirFd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirFd < 0) continue;  // exited meanwhile
    DIR* dir = fdopendir(dirFd);
    if (dir == nullptr) {
      close(dirFd);
      continue;
    }
    while (dirent* entry = readdir(dir)) {
      if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
      if (budget-- == 0) break;
      char link[64];
      ssize_t n = readlinkat(dirFd, entry->d_name, link, sizeof link - 1);
      if (n <= 8 || strncmp(link, "socket:[", 8) != 0) continue;
      link[n] = '\0';
      uint64_t inode = strtoull(link + 8, nullptr, 10);
      auto at = std::lower_bound(wanted.begin(), wanted.end(), inode);
      if (at == wanted.end() || *at != inode) continue;
      found.push_back(inode);
      wanted.erase(at);
      if (wanted.empty()) break;
    }
    closedir(dir);
  }
  return found;
}

}  // namespace procyard
