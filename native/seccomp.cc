#include "seccomp.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "binding_util.h"
#include "bindings.h"
#include "memfd.h"

#if defined(__x86_64__)
#define PROCYARD_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define PROCYARD_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

// Calls from 5.x on share one number on every architecture. Headers older than
// the kernel would otherwise leave them out, and an unknown clone3 or
// mount_setattr is an allowed one.
#ifndef __NR_open_tree
#define __NR_open_tree 428
#endif
#ifndef __NR_move_mount
#define __NR_move_mount 429
#endif
#ifndef __NR_fsopen
#define __NR_fsopen 430
#endif
#ifndef __NR_fsconfig
#define __NR_fsconfig 431
#endif
#ifndef __NR_fsmount
#define __NR_fsmount 432
#endif
#ifndef __NR_fspick
#define __NR_fspick 433
#endif
#ifndef __NR_clone3
#define __NR_clone3 435
#endif
#ifndef __NR_mount_setattr
#define __NR_mount_setattr 442
#endif
#ifndef __NR_quotactl_fd
#define __NR_quotactl_fd 443
#endif
#ifndef __NR_open_tree_attr
#define __NR_open_tree_attr 467
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

// Both 5.x calls share their numbers on x86_64 and aarch64; older headers lack them.
#ifndef __NR_pidfd_getfd
#define __NR_pidfd_getfd 438
#endif
#ifndef __NR_process_madvise
#define __NR_process_madvise 440
#endif
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif

namespace procyard {
namespace {

// Namespace flags clone() takes. CLONE_NEWTIME (0x80) is not among them: in
// clone()'s flags that bit belongs to the exit signal.
constexpr uint32_t kCloneNewFlags = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
                                    CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET;
constexpr uint32_t kUnshareNewFlags = kCloneNewFlags | CLONE_NEWTIME;

constexpr uint32_t kDenyEperm = SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA);
// SO_TIMESTAMPING as asm-generic numbers it (x86_64 and arm64 alike); headers
// may only spell the one that matches time_t.
constexpr uint32_t kSoTimestampingOld = 37;
constexpr uint32_t kSoTimestampingNew = 65;
// clone3's flags sit in a struct BPF cannot read. ENOSYS (not EPERM) makes
// glibc fall back to clone(), whose flags the filter does check.
constexpr uint32_t kDenyEnosys = SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA);

enum class Match {
  kAlways,
  kArgEquals,  // the low 32 bits of args[arg] equal value
  kArgAnyBit,  // the low 32 bits of args[arg] share a bit with value
  kTwoArgsEqual,  // as kArgEquals, and the low 32 bits of args[arg2] equal value2
};

struct Rule {
  const char* name;
  int nr;
  Match match;
  unsigned arg;
  uint32_t value;
  uint32_t action;
  unsigned arg2 = 0;
  uint32_t value2 = 0;
};

// TCP options whose keys are kept in socket option memory, charged to no
// cgroup: up to net.core.optmem_max (~128 KiB) per socket.
constexpr uint32_t kTcpMd5sig = 14;
constexpr uint32_t kTcpMd5sigExt = 32;
constexpr uint32_t kTcpAoAddKey = 38;

constexpr Rule DenyTcpOption(const char* name, uint32_t option) {
  return {name, __NR_setsockopt, Match::kTwoArgsEqual, 1, IPPROTO_TCP, kDenyEperm, 2, option};
}

constexpr Rule Deny(const char* name, int nr) { return {name, nr, Match::kAlways, 0, 0, kDenyEperm}; }

constexpr uint32_t ArgLow(unsigned i) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  return offsetof(seccomp_data, args) + 8 * i;
#else
  return offsetof(seccomp_data, args) + 8 * i + 4;
#endif
}

const std::vector<Rule>& Rules() {
  static const std::vector<Rule> rules = {
      // Mounting rearranges the sandbox's view of the host; bwrap has built it already.
#ifdef __NR_mount
      Deny("mount", __NR_mount),
#endif
#ifdef __NR_umount2
      Deny("umount2", __NR_umount2),
#endif
#ifdef __NR_umount
      Deny("umount", __NR_umount),
#endif
      Deny("fsopen", __NR_fsopen),
      Deny("fsconfig", __NR_fsconfig),
      Deny("fsmount", __NR_fsmount),
      Deny("fspick", __NR_fspick),
      Deny("move_mount", __NR_move_mount),
      Deny("open_tree", __NR_open_tree),
      Deny("open_tree_attr", __NR_open_tree_attr),
      Deny("mount_setattr", __NR_mount_setattr),
#ifdef __NR_pivot_root
      Deny("pivot_root", __NR_pivot_root),
#endif
#ifdef __NR_chroot
      Deny("chroot", __NR_chroot),
#endif
      // Reading or steering another process's memory.
#ifdef __NR_ptrace
      Deny("ptrace", __NR_ptrace),
#endif
#ifdef __NR_process_vm_readv
      Deny("process_vm_readv", __NR_process_vm_readv),
#endif
#ifdef __NR_process_vm_writev
      Deny("process_vm_writev", __NR_process_vm_writev),
#endif
      // Taking another process's fds (bwrap's init's eventfd: an app could
      // end its sandbox's monitor early), or advising on its memory.
      Deny("pidfd_getfd", __NR_pidfd_getfd),
      Deny("process_madvise", __NR_process_madvise),
      // A ring makes sockets and sets their options without socket(2) or
      // setsockopt(2), where no rule below sees the arguments.
      Deny("io_uring_setup", __NR_io_uring_setup),
      // Native AIO contexts draw on a host-wide budget (fs.aio-max-nr, 65536
      // events by default) charged to no cgroup: two calls of a 64 MiB worker
      // took all of it, and the host's own io_setup got EAGAIN. POSIX AIO
      // (glibc's aio_*) uses threads, not this.
#ifdef __NR_io_setup
      Deny("io_setup", __NR_io_setup),
#endif
      // Large kernel attack surface no app needs.
#ifdef __NR_kexec_load
      Deny("kexec_load", __NR_kexec_load),
#endif
#ifdef __NR_kexec_file_load
      Deny("kexec_file_load", __NR_kexec_file_load),
#endif
#ifdef __NR_bpf
      Deny("bpf", __NR_bpf),
#endif
#ifdef __NR_perf_event_open
      Deny("perf_event_open", __NR_perf_event_open),
#endif
#ifdef __NR_userfaultfd
      Deny("userfaultfd", __NR_userfaultfd),
#endif
      // The kernel keyring is not fully namespaced: keys could leak between tenants.
#ifdef __NR_keyctl
      Deny("keyctl", __NR_keyctl),
#endif
#ifdef __NR_add_key
      Deny("add_key", __NR_add_key),
#endif
#ifdef __NR_request_key
      Deny("request_key", __NR_request_key),
#endif
      // Netlink: a socket's queued replies (route dumps) are charged to no
      // cgroup; an attacker's 128 MiB worker held 1.1 GiB of them. glibc's
      // getaddrinfo copes without it (it then assumes IPv4 and IPv6).
      {"socket(AF_NETLINK)", __NR_socket, Match::kArgEquals, 0, AF_NETLINK, kDenyEperm},
      // Transmit timestamps: each send leaves a copy of the packet on the
      // socket's error queue, charged to no cgroup (a 128 MiB worker held
      // 1.1 GiB of them over UDP). Matched by option number alone: the same
      // numbers at other levels are options that need privileges anyway.
      {"setsockopt(SO_TIMESTAMPING)", __NR_setsockopt, Match::kArgEquals, 2, kSoTimestampingOld, kDenyEperm},
      {"setsockopt(SO_TIMESTAMPING_NEW)", __NR_setsockopt, Match::kArgEquals, 2, kSoTimestampingNew, kDenyEperm},
      // TCP signature keys (MD5, TCP-AO): ~185 KiB of uncharged kernel memory
      // a socket; an attacker's 16 MiB worker held 531 MiB of them.
      DenyTcpOption("setsockopt(TCP_MD5SIG)", kTcpMd5sig),
      DenyTcpOption("setsockopt(TCP_MD5SIG_EXT)", kTcpMd5sigExt),
      DenyTcpOption("setsockopt(TCP_AO_ADD_KEY)", kTcpAoAddKey),
      // Host administration.
#ifdef __NR_init_module
      Deny("init_module", __NR_init_module),
#endif
#ifdef __NR_finit_module
      Deny("finit_module", __NR_finit_module),
#endif
#ifdef __NR_delete_module
      Deny("delete_module", __NR_delete_module),
#endif
#ifdef __NR_swapon
      Deny("swapon", __NR_swapon),
#endif
#ifdef __NR_swapoff
      Deny("swapoff", __NR_swapoff),
#endif
#ifdef __NR_reboot
      Deny("reboot", __NR_reboot),
#endif
#ifdef __NR_acct
      Deny("acct", __NR_acct),
#endif
#ifdef __NR_quotactl
      Deny("quotactl", __NR_quotactl),
#endif
      Deny("quotactl_fd", __NR_quotactl_fd),
      // Opens any inode by handle, past the sandbox's mounts.
#ifdef __NR_open_by_handle_at
      Deny("open_by_handle_at", __NR_open_by_handle_at),
#endif
      // Typing into, or driving, a terminal the app does not own. The kernel reads
      // the request as a 32-bit int: matching the low word alone stops a request
      // with junk in the high word from slipping past (CVE-2019-10063).
      {"ioctl(TIOCSTI)", __NR_ioctl, Match::kArgEquals, 1, TIOCSTI, kDenyEperm},
      {"ioctl(TIOCLINUX)", __NR_ioctl, Match::kArgEquals, 1, TIOCLINUX, kDenyEperm},
      // New namespaces: nested user namespaces expose a large kernel surface.
      // Every CLONE_NEW* bit lies in the low 32 bits of the flags (args[0]).
      {"unshare(CLONE_NEW*)", __NR_unshare, Match::kArgAnyBit, 0, kUnshareNewFlags, kDenyEperm},
      {"clone(CLONE_NEW*)", __NR_clone, Match::kArgAnyBit, 0, kCloneNewFlags, kDenyEperm},
      {"clone3", __NR_clone3, Match::kAlways, 0, 0, kDenyEnosys},
  };
  return rules;
}

constexpr uint32_t kIpprotoMptcp = 262;

sock_filter Stmt(uint16_t code, uint32_t k) { return BPF_STMT(code, k); }
sock_filter Jump(uint16_t code, uint32_t k, uint8_t jt, uint8_t jf) { return BPF_JUMP(code, k, jt, jf); }

// Each rule: `if (nr != rule.nr) skip body`, nr in the accumulator. A body
// that reads an argument reloads nr (masked with nrMask) before falling
// through, so two rules on one call compose.
void AppendRules(std::vector<sock_filter>* p, const std::vector<Rule>& rules, uint32_t nrMask) {
  for (const Rule& rule : rules) {
    std::vector<sock_filter> body;
    if (rule.match == Match::kTwoArgsEqual) {
      // A first mismatch skips the second test and the return alike.
      body.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, ArgLow(rule.arg)));
      body.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, rule.value, 0, 3));
      body.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, ArgLow(rule.arg2)));
      body.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, rule.value2, 0, 1));
    } else if (rule.match != Match::kAlways) {
      body.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, ArgLow(rule.arg)));
      uint16_t test = rule.match == Match::kArgEquals ? BPF_JEQ : BPF_JSET;
      body.push_back(Jump(BPF_JMP | test | BPF_K, rule.value, 0, 1));
    }
    body.push_back(Stmt(BPF_RET | BPF_K, rule.action));
    if (rule.match != Match::kAlways) {
      body.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)));
      if (nrMask != ~0u) body.push_back(Stmt(BPF_ALU | BPF_AND | BPF_K, nrMask));
    }
    p->push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(rule.nr), 0, static_cast<uint8_t>(body.size())));
    p->insert(p->end(), body.begin(), body.end());
  }
}

// Where one ABI keeps the calls the socket filter reads.
struct SocketAbi {
  uint32_t arch;
  uint32_t nrMask;  // x32 calls come with __X32_SYSCALL_BIT set: masked off, they are x86_64's
  int socket;
  int ioUringSetup;
  int sendto;    // flags in args[3]
  int sendmsg;   // flags in args[2]
  int sendmmsg;  // flags in args[3]
  int setsockopt;  // level in args[1], option in args[2]
  int socketcall;  // -1: none. Its arguments sit in memory, out of BPF's reach: refused whole
};

constexpr uint32_t kMsgFastopen = 0x20000000;
constexpr uint32_t kIpLocalPortRange = 51;  // IP_LOCAL_PORT_RANGE (Linux 6.3), which older headers lack
constexpr uint32_t kAfVsock = 40;

std::vector<SocketAbi> SocketAbis() {
#if defined(__x86_64__)
  return {{AUDIT_ARCH_X86_64, ~static_cast<uint32_t>(__X32_SYSCALL_BIT), 41, 425, 44, 46, 307, 54, -1},
          {AUDIT_ARCH_I386, ~0u, 359, 425, 369, 370, 345, 366, 102}};
#elif defined(__aarch64__)
  return {{AUDIT_ARCH_AARCH64, ~0u, 198, 425, 206, 211, 269, 208, -1}, {AUDIT_ARCH_ARM, ~0u, 281, 425, 290, 296, 374, 294, -1}};
#else
  return {};
#endif
}

// The checks, for one ABI's numbers (also the builtin program's SocketRules).
std::vector<Rule> SocketRulesFor(const SocketAbi& abi) {
  std::vector<Rule> rules = {
      {"socket(IPPROTO_MPTCP)", abi.socket, Match::kArgEquals, 2, kIpprotoMptcp, kDenyEperm},
      // vsock reaches the hypervisor's services on a VM (its agents listen
      // there), and no Landlock rule covers it.
      {"socket(AF_VSOCK)", abi.socket, Match::kArgEquals, 0, kAfVsock, kDenyEperm},
      {"io_uring_setup", abi.ioUringSetup, Match::kAlways, 0, 0, kDenyEperm},
      // TCP Fast Open: a send with MSG_FASTOPEN connects without connect(2),
      // the call Landlock's connect rule is checked on.
      {"sendto(MSG_FASTOPEN)", abi.sendto, Match::kArgAnyBit, 3, kMsgFastopen, kDenyEperm},
      {"sendmsg(MSG_FASTOPEN)", abi.sendmsg, Match::kArgAnyBit, 2, kMsgFastopen, kDenyEperm},
      {"sendmmsg(MSG_FASTOPEN)", abi.sendmmsg, Match::kArgAnyBit, 3, kMsgFastopen, kDenyEperm},
      // Narrows the kernel's pick of an ephemeral port to one: with listen()
      // without bind() (no bind hook sees that), a worker took the exact port
      // of a neighbour where the workers' range lies inside ip_local_port_range.
      {"setsockopt(IP_LOCAL_PORT_RANGE)", abi.setsockopt, Match::kTwoArgsEqual, 1, IPPROTO_IP, kDenyEperm, 2, kIpLocalPortRange},
  };
  if (abi.socketcall >= 0) rules.push_back({"socketcall", abi.socketcall, Match::kAlways, 0, 0, kDenyEperm});
  return rules;
}

std::vector<sock_filter> SocketFilterProgram() {
  std::vector<sock_filter> p;
  const std::vector<SocketAbi> abis = SocketAbis();
  if (abis.empty()) return p;
  p.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)));
  for (const SocketAbi& abi : abis) {
    // This ABI's block ends in a return on every path.
    std::vector<sock_filter> block;
    const sock_filter loadNr = Stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr));
    block.push_back(loadNr);
    if (abi.nrMask != ~0u) block.push_back(Stmt(BPF_ALU | BPF_AND | BPF_K, abi.nrMask));
    AppendRules(&block, SocketRulesFor(abi), abi.nrMask);
    block.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    // The arch is still in the accumulator when this test runs: each block
    // that does not match is jumped over whole.
    p.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, abi.arch, 0, static_cast<uint8_t>(block.size())));
    p.insert(p.end(), block.begin(), block.end());
  }
  // An ABI this kernel should not have: nothing of it can be read, so refuse.
  p.push_back(Stmt(BPF_RET | BPF_K, kDenyEperm));
  return p;
}

// The network policy's supplement (seccomp.h, SocketFilter), as rules of
// the builtin program when that is the profile: one program, one attach.
// The builtin program kills any ABI but the native one, so its numbers suffice.
std::vector<Rule> SocketRules() { return SocketRulesFor(SocketAbis().front()); }

}  // namespace

std::vector<sock_filter> BuiltinSeccompProgram(bool socketRules) {
  std::vector<sock_filter> p;
#ifdef PROCYARD_AUDIT_ARCH
  const sock_filter loadNr = Stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr));
  // Syscall numbers mean other calls under another ABI (i386 through int 0x80
  // on x86_64): with no rules for it, only killing is safe.
  p.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)));
  p.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, PROCYARD_AUDIT_ARCH, 1, 0));
  p.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
  p.push_back(loadNr);
#ifdef __x86_64__
  // x32 calls pass the x86_64 arch check with the x32 bit set in nr: they
  // would match none of the rules below.
  p.push_back(Jump(BPF_JMP | BPF_JSET | BPF_K, __X32_SYSCALL_BIT, 0, 1));
  p.push_back(Stmt(BPF_RET | BPF_K, kDenyEperm));
#endif
  std::vector<Rule> rules = Rules();
  if (socketRules) {
    std::vector<Rule> more = SocketRules();
    rules.insert(rules.end(), more.begin(), more.end());
  }
  AppendRules(&p, rules, ~0u);
  p.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
#endif
  return p;
}

std::vector<sock_filter> SocketFilterInstructions() { return SocketFilterProgram(); }

const struct sock_fprog* SocketFilter() {
  static const std::vector<sock_filter> program = SocketFilterProgram();
  static const sock_fprog prog = {static_cast<unsigned short>(program.size()), const_cast<sock_filter*>(program.data())};
  return program.empty() ? nullptr : &prog;
}

std::vector<std::string> BuiltinSeccompRules() {
  std::vector<std::string> names;
#ifdef PROCYARD_AUDIT_ARCH
  for (const Rule& rule : Rules()) names.emplace_back(rule.name);
#endif
  return names;
}

SeccompMemfd SeccompProgramMemfd(const std::vector<sock_filter>& program) {
  SeccompMemfd out;
  if (program.empty()) {
    out.err = ENOSYS;
    out.step = "seccomp filter for this architecture";
    return out;
  }
  // Sealed, the program every sandbox reads is the one generated here, even
  // if a bug elsewhere got the fd written to.
  MemfdResult memfd = SealedMemfd("procyard-seccomp", program.data(), program.size() * sizeof(sock_filter));
  out.fd = memfd.fd;
  out.err = memfd.err;
  out.step = memfd.step;
  return out;
}

// ---- napi glue ----

namespace {

Napi::Value BuiltinSeccompFilterJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool socketRules = info.Length() > 0 && info[0].ToBoolean().Value();
  SeccompMemfd memfd = SeccompProgramMemfd(BuiltinSeccompProgram(socketRules));
  if (memfd.fd >= 0) return Napi::Number::New(env, memfd.fd);
  if (memfd.err == ENOSYS && BuiltinSeccompRules().empty())
    throw Napi::Error::New(env,
                           "the built-in seccomp filter supports x86_64 and aarch64 only: set "
                           "process.seccompProfile to the path of a compiled BPF program, or to ''");
  throw SystemError(env, memfd.err, memfd.step, "");
}

// The socket filter alone, for a sandbox with no seccomp profile.
Napi::Value SocketSeccompFilterJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SeccompMemfd memfd = SeccompProgramMemfd(SocketFilterInstructions());
  if (memfd.fd >= 0) return Napi::Number::New(env, memfd.fd);
  throw SystemError(env, memfd.err, memfd.step, "");
}

Napi::Value BuiltinSeccompRulesJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<std::string> names = BuiltinSeccompRules();
  Napi::Array out = Napi::Array::New(env, names.size());
  for (uint32_t i = 0; i < names.size(); i++) out.Set(i, names[i]);
  return out;
}

}  // namespace

void InitSeccomp(Napi::Env env, Napi::Object exports) {
  exports.Set("builtinSeccompFilter", Napi::Function::New(env, BuiltinSeccompFilterJs, "builtinSeccompFilter"));
  exports.Set("socketSeccompFilter", Napi::Function::New(env, SocketSeccompFilterJs, "socketSeccompFilter"));
  exports.Set("builtinSeccompRules", Napi::Function::New(env, BuiltinSeccompRulesJs, "builtinSeccompRules"));
}

}  // namespace procyard
