// Who listens on a TCP port, from the kernel's sock_diag netlink interface:
// it walks the listening sockets only, where /proc/net/tcp formats every
// socket of the host (a tenant with tens of thousands of connections made
// each of the server's health checks cost ~0.5 s of CPU). No napi here.
#pragma once

#include <stdint.h>
#include <sys/types.h>

#include <vector>

namespace procyard {

struct Listener {
  uint32_t uid;    // the socket's owner: its creator's UID, whoever holds it now
  uint64_t inode;  // the socket's inode, as /proc/<pid>/fd names it: "socket:[inode]"
};

// The TCP listeners on `port` that a connect to 127.0.0.1:port reaches, IPv4
// and IPv6: those bound to 127.0.0.1 (or ::ffff:127.0.0.1) where there are
// any, as the kernel looks the exact address up first; else those bound to
// 0.0.0.0, or to :: without IPV6_V6ONLY. Never one bound to a device other
// than lo. False with *err (an errno) where sock_diag cannot answer.
bool LoopbackListeners(uint16_t port, std::vector<Listener>* listeners, int* err);

// Which of `inodes` a process of the tree under `root` holds an fd of (the
// tree walked through /proc/<pid>/task/<tid>/children, as a sandbox's
// processes all descend from its monitor). Reads at most maxFds fd links in
// all, so a tree holding huge fd tables costs a bounded walk; stops early
// once every inode is found.
std::vector<uint64_t> SocketsHeldInTree(pid_t root, const std::vector<uint64_t>& inodes, size_t maxFds);

}  // namespace procyard
