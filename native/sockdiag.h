// Who listens on a TCP port, from the kernel's sock_diag netlink interface:
// it walks the listening sockets only, where /proc/net/tcp formats every
// socket of the host (a tenant with tens of thousands of connections made
// each of the server's health checks cost ~0.5 s of CPU). No napi here.
#pragma once

#include <stdint.h>

#include <vector>

namespace procyard {

// Owner UIDs of the TCP listeners on `port` that a connect to 127.0.0.1:port
// could reach (bound to 127.0.0.1, 0.0.0.0, :: or ::ffff:127.0.0.1), IPv4
// and IPv6. False with *err (an errno) where sock_diag cannot answer.
bool LoopbackListenerUids(uint16_t port, std::vector<uint32_t>* uids, int* err);

}  // namespace procyard
