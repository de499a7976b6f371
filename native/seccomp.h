// procyard's built-in seccomp filter: a classic BPF program generated here,
// no libseccomp. No napi here (the glue sits at the bottom of seccomp.cc).
#pragma once

#include <linux/filter.h>

#include <string>
#include <vector>

namespace procyard {

// The program, as the raw `struct sock_filter` array bwrap's `--seccomp FD`
// reads. A foreign architecture is killed; the denied calls fail with EPERM
// (clone3 with ENOSYS); everything else is allowed.
std::vector<sock_filter> BuiltinSeccompProgram();

// What the program denies, one entry per rule (`ptrace`, `ioctl(TIOCSTI)`,
// `unshare(CLONE_NEW*)`...), for docs and preflight.
std::vector<std::string> BuiltinSeccompRules();

struct SeccompMemfd {
  int fd = -1;               // O_CLOEXEC, sealed, offset 0; -1 on failure
  int err = 0;               // errno of the failed step
  const char* step = "";     // the failed step, "" on success
};

// A memfd holding BuiltinSeccompProgram(), sealed against any change so every
// sandbox that reads it gets the same program.
SeccompMemfd BuiltinSeccompMemfd();

}  // namespace procyard
