// procyard's built-in seccomp filter: a classic BPF program generated here,
// no libseccomp. No napi here (the glue sits at the bottom of seccomp.cc).
#pragma once

#include <linux/filter.h>

#include <string>
#include <vector>

namespace procyard {

// The program, as the raw `struct sock_filter` array bwrap's `--seccomp FD`
// reads. A foreign architecture is killed; the denied calls fail with EPERM
// (clone3 with ENOSYS); everything else is allowed. With socketRules, it also
// carries SocketFilter()'s two rules (for a sandbox under the TCP rules).
std::vector<sock_filter> BuiltinSeccompProgram(bool socketRules = false);

// What the program denies, one entry per rule (`ptrace`, `ioctl(TIOCSTI)`,
// `unshare(CLONE_NEW*)`...), for docs and preflight.
std::vector<std::string> BuiltinSeccompRules();

// The network policy's supplement to its Landlock TCP rules, installed by
// the clone child itself whatever process.seccompProfile says. Landlock's TCP
// rules cover IPPROTO_TCP sockets only: an MPTCP socket (IPPROTO_MPTCP) binds
// and connects past them, in TCP's own port space, and talks to any TCP peer.
// So socket(2) with IPPROTO_MPTCP fails with EPERM, and so do a send with
// MSG_FASTOPEN (TCP Fast Open connects without connect(2), the call the
// connect rule is checked on), an AF_VSOCK socket (the hypervisor's services,
// outside any Landlock rule) and io_uring_setup (a ring opens and binds
// sockets without socket(2), where no filter sees the protocol). Every other
// call is allowed. Null where this
// architecture has no program (then the spawn refuses the TCP rules).
const struct sock_fprog* SocketFilter();
// The same program as instructions (for a memfd bwrap reads).
std::vector<sock_filter> SocketFilterInstructions();

struct SeccompMemfd {
  int fd = -1;               // O_CLOEXEC, sealed, offset 0; -1 on failure
  int err = 0;               // errno of the failed step
  const char* step = "";     // the failed step, "" on success
};

// A memfd holding a program, sealed against any change so every sandbox that
// reads it gets the same program.
SeccompMemfd SeccompProgramMemfd(const std::vector<sock_filter>& program);

}  // namespace procyard
