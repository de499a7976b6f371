// The cgroup socket hooks: a small eBPF assembler, the programs built from a
// rule table, and the bpf(2) calls that load and attach them. Hand-assembled
// (like the seccomp filter) rather than compiled with clang at build time: the
// rules are the backend's config, known only at run time, and become
// immediates; a build then needs no clang, and what the kernel runs is here to
// read. The verifier checks each program when it is loaded.
#include "sockhooks.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <stddef.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace procyard {
namespace {

long Bpf(int cmd, union bpf_attr* attr) {
  long r = syscall(SYS_bpf, cmd, attr, sizeof *attr);
  return r < 0 ? -errno : r;
}

// The assembler: instructions, and forward jumps patched when their label is bound.
class Asm {
 public:
  int Label() {
    at_.push_back(-1);
    return static_cast<int>(at_.size()) - 1;
  }
  void Bind(int label) { at_[label] = static_cast<int>(code_.size()); }

  void Mov64(int dst, int src) { Emit(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0); }
  void Mov64Imm(int dst, int32_t imm) { Emit(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm); }
  void Mov32(int dst, int src) { Emit(BPF_ALU | BPF_MOV | BPF_X, dst, src, 0, 0); }
  void Add64Imm(int dst, int32_t imm) { Emit(BPF_ALU64 | BPF_ADD | BPF_K, dst, 0, 0, imm); }
  void Add64(int dst, int src) { Emit(BPF_ALU64 | BPF_ADD | BPF_X, dst, src, 0, 0); }
  void Rsh32Imm(int dst, int32_t imm) { Emit(BPF_ALU | BPF_RSH | BPF_K, dst, 0, 0, imm); }
  void Rsh32(int dst, int src) { Emit(BPF_ALU | BPF_RSH | BPF_X, dst, src, 0, 0); }
  void And32Imm(int dst, uint32_t imm) { Emit(BPF_ALU | BPF_AND | BPF_K, dst, 0, 0, static_cast<int32_t>(imm)); }
  void Or32(int dst, int src) { Emit(BPF_ALU | BPF_OR | BPF_X, dst, src, 0, 0); }
  // Network to host order (BPF_TO_BE swaps on a little-endian CPU, nothing on a big-endian one).
  void FromBe(int dst, int bits) { Emit(BPF_ALU | BPF_END | BPF_TO_BE, dst, 0, 0, bits); }
  void Load32(int dst, int src, int16_t off) { Emit(BPF_LDX | BPF_MEM | BPF_W, dst, src, off, 0); }
  void Load8(int dst, int src, int16_t off) { Emit(BPF_LDX | BPF_MEM | BPF_B, dst, src, off, 0); }
  void Load64(int dst, int src, int16_t off) { Emit(BPF_LDX | BPF_MEM | BPF_DW, dst, src, off, 0); }
  void Store32(int dst, int16_t off, int src) { Emit(BPF_STX | BPF_MEM | BPF_W, dst, src, off, 0); }
  void Store32Imm(int dst, int16_t off, uint32_t imm) { Emit(BPF_ST | BPF_MEM | BPF_W, dst, 0, off, static_cast<int32_t>(imm)); }
  void LoadMap(int dst, int mapFd) {
    Emit(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, 0, mapFd);
    Emit(0, 0, 0, 0, 0);
  }
  void Call(int helper) { Emit(BPF_JMP | BPF_CALL, 0, 0, 0, helper); }
  void Exit() { Emit(BPF_JMP | BPF_EXIT, 0, 0, 0, 0); }
  void Ja(int label) { Jump(BPF_JMP | BPF_JA, 0, 0, 0, label); }
  // 32-bit compares (BPF_JMP32, Linux 5.1): the addresses are u32 words.
  void Jmp32Imm(int op, int reg, uint32_t imm, int label) { Jump(BPF_JMP32 | op | BPF_K, reg, 0, static_cast<int32_t>(imm), label); }
  void Jmp32Reg(int op, int reg, int src, int label) { Jump(BPF_JMP32 | op | BPF_X, reg, src, 0, label); }
  void Jmp64Imm(int op, int reg, int32_t imm, int label) { Jump(BPF_JMP | op | BPF_K, reg, 0, imm, label); }

  // The program, jumps resolved; false when one lands too far or on no label.
  bool Finish(std::vector<bpf_insn>* out) {
    for (auto [insn, label] : fixups_) {
      long off = static_cast<long>(at_[label]) - static_cast<long>(insn) - 1;
      if (at_[label] < 0 || off < 0 || off > 32767) return false;
      code_[insn].off = static_cast<int16_t>(off);
    }
    *out = code_;
    return true;
  }

 private:
  void Emit(int code, int dst, int src, int16_t off, int32_t imm) {
    bpf_insn insn = {};
    insn.code = static_cast<uint8_t>(code);
    insn.dst_reg = dst & 0xf;
    insn.src_reg = src & 0xf;
    insn.off = off;
    insn.imm = imm;
    code_.push_back(insn);
  }
  void Jump(int code, int reg, int src, int32_t imm, int label) {
    fixups_.push_back({code_.size(), label});
    Emit(code, reg, src, 0, imm);
  }
  std::vector<bpf_insn> code_;
  std::vector<int> at_;
  std::vector<std::pair<size_t, int>> fixups_;
};

// Registers: R1-R5 are clobbered by calls; R6-R9 survive them.
enum { R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 };
const int kCtx = R6;    // the program's context
const int kPort = R7;   // destination port, host order
const int kIp4 = R8;    // IPv4 destination, as the kernel has it (network order)
const int kLocal = R9;  // 1 when the destination is an address of this host

// Four bytes as the u32 the program loads from memory holding them.
uint32_t Word(const uint8_t* bytes) {
  uint32_t w;
  memcpy(&w, bytes, 4);
  return w;
}
uint32_t Word(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  const uint8_t bytes[4] = {a, b, c, d};
  return Word(bytes);
}
// The bytes of a prefix's mask, word i of the address.
uint32_t MaskWord(int prefix, int i) {
  uint8_t bytes[4];
  for (int b = 0; b < 4; b++) {
    int bits = prefix - (i * 4 + b) * 8;
    bytes[b] = bits >= 8 ? 0xff : bits <= 0 ? 0 : static_cast<uint8_t>(0xff << (8 - bits));
  }
  return Word(bytes);
}

const int16_t kIp4Off = offsetof(struct bpf_sock_addr, user_ip4);
const int16_t kIp6Off = offsetof(struct bpf_sock_addr, user_ip6);
const int16_t kPortOff = offsetof(struct bpf_sock_addr, user_port);
const int16_t kTypeOff = offsetof(struct bpf_sock_addr, type);
const int16_t kKey = -16;  // a 16-byte map key on the stack

void LoadPort(Asm& a) {
  a.Load32(kPort, kCtx, kPortOff);
  a.FromBe(kPort, 16);
}

// Falls to `next` unless the port is in [lo, hi].
void MatchPorts(Asm& a, uint16_t lo, uint16_t hi, int next) {
  if (lo == 0 && hi == 65535) return;
  if (lo == hi) {
    a.Jmp32Imm(BPF_JNE, kPort, lo, next);
    return;
  }
  if (lo > 0) a.Jmp32Imm(BPF_JLT, kPort, lo, next);
  if (hi < 65535) a.Jmp32Imm(BPF_JGT, kPort, hi, next);
}

// Ends the local-address check: kLocal = 1 when the 16-byte key at kKey is
// in the local-address map, or when the code jumped to `local` (bound here).
void LocalFromMap(Asm& a, int localMap, int local) {
  int done = a.Label();
  a.LoadMap(R1, localMap);
  a.Mov64(R2, R10);
  a.Add64Imm(R2, kKey);
  a.Call(BPF_FUNC_map_lookup_elem);
  a.Jmp64Imm(BPF_JEQ, R0, 0, done);
  a.Bind(local);
  a.Mov64Imm(kLocal, 1);
  a.Bind(done);
}

// Jumps to `target` when the destination matches the rule (kind of
// destination: `v4` for the IPv4 section, else IPv6).
void MatchRule(Asm& a, const AddrRule& rule, bool v4, int target) {
  if (!rule.local && (rule.family == 4) != v4) return;
  int next = a.Label();
  if (rule.local) {
    a.Jmp32Imm(BPF_JEQ, kLocal, 0, next);
  } else if (v4) {
    if (rule.prefix > 0) {
      a.Mov32(R1, kIp4);
      if (rule.prefix < 32) a.And32Imm(R1, MaskWord(rule.prefix, 0));
      a.Jmp32Imm(BPF_JNE, R1, Word(rule.addr), next);
    }
  } else {
    for (int i = 0; i < 4; i++) {
      uint32_t mask = MaskWord(rule.prefix, i);
      if (mask == 0) continue;
      a.Load32(R1, kCtx, static_cast<int16_t>(kIp6Off + 4 * i));
      if (mask != 0xffffffffu) a.And32Imm(R1, mask);
      a.Jmp32Imm(BPF_JNE, R1, Word(rule.addr + 4 * i), next);
    }
  }
  MatchPorts(a, rule.portLo, rule.portHi, next);
  a.Ja(target);
  a.Bind(next);
}

// The verdict on a destination whose kLocal and kPort are set: the workers'
// ports on local addresses (but a worker's own: an app may talk to itself),
// other backends' workers' ports there, the denied, the TCP ports, the allowed.
void Verdict(Asm& a, const SockHookRules& rules, const SockHooks& maps, bool v4, int allow, int deny) {
  int notWorker = a.Label();
  a.Jmp32Imm(BPF_JEQ, kLocal, 0, notWorker);
  // Another backend's workers' ports on this host (its range, from the
  // registry): bit `port` of the one-entry bitmap.
  int notOther = a.Label();
  a.Store32Imm(R10, kKey - 4, 0);
  a.LoadMap(R1, maps.otherPorts);
  a.Mov64(R2, R10);
  a.Add64Imm(R2, kKey - 4);
  a.Call(BPF_FUNC_map_lookup_elem);
  a.Jmp64Imm(BPF_JEQ, R0, 0, notOther);
  a.Mov32(R1, kPort);
  a.And32Imm(R1, 0xffff);  // bounds the byte offset below for the verifier
  a.Rsh32Imm(R1, 3);
  a.Add64(R0, R1);
  a.Load8(R2, R0, 0);
  a.Mov32(R1, kPort);
  a.And32Imm(R1, 7);
  a.Rsh32(R2, R1);
  a.And32Imm(R2, 1);
  a.Jmp32Imm(BPF_JNE, R2, 0, deny);
  a.Bind(notOther);
  MatchPorts(a, rules.workerPorts.lo, rules.workerPorts.hi, notWorker);
  a.Call(BPF_FUNC_get_current_uid_gid);
  a.Store32(R10, kKey - 4, R0);  // the low half: the UID
  a.LoadMap(R1, maps.uidPorts);
  a.Mov64(R2, R10);
  a.Add64Imm(R2, kKey - 4);
  a.Call(BPF_FUNC_map_lookup_elem);
  a.Jmp64Imm(BPF_JEQ, R0, 0, deny);
  a.Load32(R1, R0, 0);
  a.Jmp32Reg(BPF_JEQ, kPort, R1, notWorker);
  a.Ja(deny);
  a.Bind(notWorker);
  for (const AddrRule& rule : rules.deny) MatchRule(a, rule, v4, deny);
  if (rules.tcpPortsOnly) {
    int tcpOk = a.Label();
    a.Load32(R1, kCtx, kTypeOff);
    a.Jmp32Imm(BPF_JNE, R1, SOCK_STREAM, tcpOk);
    for (const PortSpan& span : rules.tcpPorts) {
      int next = a.Label();
      MatchPorts(a, span.lo, span.hi, next);
      a.Ja(tcpOk);
      a.Bind(next);
    }
    a.Ja(deny);
    a.Bind(tcpOk);
  }
  if (!rules.allowOnly) {
    a.Ja(allow);
    return;
  }
  for (const AddrRule& rule : rules.allow) MatchRule(a, rule, v4, allow);
  a.Ja(deny);
}

// The IPv4 section: kIp4 and kPort set; ends in allow or deny.
void Ip4Section(Asm& a, const SockHookRules& rules, const SockHooks& maps, int allow, int deny) {
  int local = a.Label();
  a.Mov64Imm(kLocal, 0);
  // 127.0.0.0/8 and 0.0.0.0/8 (which Linux connects to this host); multicast
  // (224.0.0.0/4) and the limited broadcast, whose datagrams this host's own
  // sockets get a copy of; then the host's own addresses and its subnets'
  // broadcast addresses (the map).
  a.Mov32(R1, kIp4);
  a.And32Imm(R1, Word(0xff, 0, 0, 0));
  a.Jmp32Imm(BPF_JEQ, R1, Word(127, 0, 0, 0), local);
  a.Jmp32Imm(BPF_JEQ, R1, 0, local);
  a.Mov32(R1, kIp4);
  a.And32Imm(R1, Word(0xf0, 0, 0, 0));
  a.Jmp32Imm(BPF_JEQ, R1, Word(0xe0, 0, 0, 0), local);
  a.Jmp32Imm(BPF_JEQ, kIp4, Word(255, 255, 255, 255), local);
  a.Store32Imm(R10, kKey, 0);
  a.Store32Imm(R10, kKey + 4, 0);
  a.Store32Imm(R10, kKey + 8, Word(0, 0, 0xff, 0xff));
  a.Store32(R10, kKey + 12, kIp4);
  LocalFromMap(a, maps.localAddrs, local);
  Verdict(a, rules, maps, true, allow, deny);
}

void Ending(Asm& a, int allow, int deny) {
  a.Bind(allow);
  a.Mov64Imm(R0, 1);
  a.Exit();
  a.Bind(deny);
  a.Mov64Imm(R0, 0);
  a.Exit();
}

// connect4, sendmsg4.
void Destination4(Asm& a, const SockHookRules& rules, const SockHooks& maps) {
  int allow = a.Label(), deny = a.Label();
  a.Mov64(kCtx, R1);
  LoadPort(a);
  a.Load32(kIp4, kCtx, kIp4Off);
  Ip4Section(a, rules, maps, allow, deny);
  Ending(a, allow, deny);
}

// connect6, sendmsg6: a v4-mapped address is judged as the IPv4 it is.
void Destination6(Asm& a, const SockHookRules& rules, const SockHooks& maps) {
  int allow = a.Label(), deny = a.Label(), v6 = a.Label(), local = a.Label(), lookup = a.Label();
  a.Mov64(kCtx, R1);
  LoadPort(a);
  a.Load32(R1, kCtx, kIp6Off);
  a.Jmp32Imm(BPF_JNE, R1, 0, v6);
  a.Load32(R1, kCtx, kIp6Off + 4);
  a.Jmp32Imm(BPF_JNE, R1, 0, v6);
  a.Load32(R1, kCtx, kIp6Off + 8);
  a.Jmp32Imm(BPF_JNE, R1, Word(0, 0, 0xff, 0xff), v6);
  a.Load32(kIp4, kCtx, kIp6Off + 12);
  Ip4Section(a, rules, maps, allow, deny);

  a.Bind(v6);
  a.Mov64Imm(kLocal, 0);
  // Multicast (ff00::/8), ::, ::1, then the host's own addresses.
  a.Load32(R1, kCtx, kIp6Off);
  a.And32Imm(R1, Word(0xff, 0, 0, 0));
  a.Jmp32Imm(BPF_JEQ, R1, Word(0xff, 0, 0, 0), local);
  a.Load32(R1, kCtx, kIp6Off);
  a.Load32(R2, kCtx, kIp6Off + 4);
  a.Or32(R1, R2);
  a.Load32(R2, kCtx, kIp6Off + 8);
  a.Or32(R1, R2);
  a.Jmp32Imm(BPF_JNE, R1, 0, lookup);
  a.Load32(R1, kCtx, kIp6Off + 12);
  a.Jmp32Imm(BPF_JEQ, R1, 0, local);
  a.Jmp32Imm(BPF_JEQ, R1, Word(0, 0, 0, 1), local);
  a.Bind(lookup);
  for (int i = 0; i < 4; i++) {
    a.Load32(R1, kCtx, static_cast<int16_t>(kIp6Off + 4 * i));
    a.Store32(R10, static_cast<int16_t>(kKey + 4 * i), R1);
  }
  LocalFromMap(a, maps.localAddrs, local);
  Verdict(a, rules, maps, false, allow, deny);
  Ending(a, allow, deny);
}

// bind4, bind6: a worker (a UID in the map) binds its own port on loopback;
// anything else (a build, a probe) binds nothing.
void Bind(Asm& a, const SockHooks& maps, bool v4) {
  int allow = a.Label(), deny = a.Label();
  a.Mov64(kCtx, R1);
  a.Call(BPF_FUNC_get_current_uid_gid);
  a.Store32(R10, -4, R0);  // the low half: the UID
  a.LoadMap(R1, maps.uidPorts);
  a.Mov64(R2, R10);
  a.Add64Imm(R2, -4);
  a.Call(BPF_FUNC_map_lookup_elem);
  a.Jmp64Imm(BPF_JEQ, R0, 0, deny);
  a.Load32(R8, R0, 0);
  LoadPort(a);
  a.Jmp32Reg(BPF_JNE, kPort, R8, deny);
  if (v4) {
    a.Load32(R1, kCtx, kIp4Off);
    a.Jmp32Imm(BPF_JNE, R1, Word(127, 0, 0, 1), deny);
  } else {
    for (int i = 0; i < 4; i++) {
      a.Load32(R1, kCtx, static_cast<int16_t>(kIp6Off + 4 * i));
      a.Jmp32Imm(BPF_JNE, R1, i < 3 ? 0 : Word(0, 0, 0, 1), deny);
    }
  }
  Ending(a, allow, deny);
}

// Ingress: a TCP listener of the sandbox takes connections from this host
// only. listen(2) on a socket never bound binds it to 0.0.0.0 on a port of
// the kernel's choosing, a path the bind hooks never see; its SYNs from
// another machine arrive on a device other than lo and are dropped here.
void Ingress(Asm& a) {
  int allow = a.Label(), deny = a.Label();
  const int kLoopbackIfindex = 1;
  const int kTcpListen = 10;
  a.Load32(R2, R1, offsetof(struct __sk_buff, ingress_ifindex));
  a.Jmp32Imm(BPF_JEQ, R2, kLoopbackIfindex, allow);
  a.Load64(R1, R1, offsetof(struct __sk_buff, sk));
  a.Jmp64Imm(BPF_JEQ, R1, 0, allow);
  a.Load32(R2, R1, offsetof(struct bpf_sock, state));
  a.Jmp32Imm(BPF_JEQ, R2, kTcpListen, deny);
  Ending(a, allow, deny);
}

// Socket creation: an IP socket of the sandbox is TCP or UDP. The others send
// through paths no connect or sendmsg hook sees: UDP-Lite's connect and the
// sends of its connected socket, ping sockets (ICMP echo, unprivileged where
// net.ipv4.ping_group_range lets a group, as systemd sets it) to any address,
// SCTP. Refused here, socket(2) fails with EPERM.
void Create(Asm& a) {
  int allow = a.Label(), deny = a.Label(), ip = a.Label();
  a.Load32(R2, R1, offsetof(struct bpf_sock, family));
  a.Jmp32Imm(BPF_JEQ, R2, AF_INET, ip);
  a.Jmp32Imm(BPF_JNE, R2, AF_INET6, allow);
  a.Bind(ip);
  a.Load32(R2, R1, offsetof(struct bpf_sock, protocol));
  a.Jmp32Imm(BPF_JEQ, R2, IPPROTO_TCP, allow);
  a.Jmp32Imm(BPF_JEQ, R2, IPPROTO_UDP, allow);
  a.Ja(deny);
  Ending(a, allow, deny);
}

struct ProgramKind {
  const char* name;
  bpf_prog_type type;
  bpf_attach_type attach;
};
const ProgramKind kKinds[kSockHookPrograms] = {
    {"connect4", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_CONNECT},
    {"connect6", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET6_CONNECT},
    {"sendmsg4", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_UDP4_SENDMSG},
    {"sendmsg6", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_UDP6_SENDMSG},
    {"bind4", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_BIND},
    {"bind6", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET6_BIND},
    {"ingress", BPF_PROG_TYPE_CGROUP_SKB, BPF_CGROUP_INET_INGRESS},
    {"sock_create", BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET_SOCK_CREATE},
};

int MakeMap(uint32_t keySize, uint32_t valueSize, uint32_t entries) {
  union bpf_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.map_type = BPF_MAP_TYPE_HASH;
  attr.key_size = keySize;
  attr.value_size = valueSize;
  attr.max_entries = entries;
  // Memory as entries come, not max_entries' worth up front.
  attr.map_flags = BPF_F_NO_PREALLOC;
  return static_cast<int>(Bpf(BPF_MAP_CREATE, &attr));
}

// A one-entry array map holding `bytes` of bits (zeroed when made).
int MakeBitmap(uint32_t bytes) {
  union bpf_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.map_type = BPF_MAP_TYPE_ARRAY;
  attr.key_size = 4;
  attr.value_size = bytes;
  attr.max_entries = 1;
  return static_cast<int>(Bpf(BPF_MAP_CREATE, &attr));
}

// Loads one program; on a refusal, loads it again with a log to say why.
int LoadProgram(const ProgramKind& kind, const std::vector<bpf_insn>& code, SockHookError* error) {
  static const char kLicense[] = "GPL";
  union bpf_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.prog_type = kind.type;
  attr.expected_attach_type = kind.attach;
  attr.insns = reinterpret_cast<uintptr_t>(code.data());
  attr.insn_cnt = static_cast<uint32_t>(code.size());
  attr.license = reinterpret_cast<uintptr_t>(kLicense);
  strncpy(attr.prog_name, kind.name, sizeof attr.prog_name - 1);
  long fd = Bpf(BPF_PROG_LOAD, &attr);
  if (fd >= 0) return static_cast<int>(fd);
  error->err = static_cast<int>(-fd);
  error->step = std::string("bpf(BPF_PROG_LOAD ") + kind.name + ")";
  if (fd == -EPERM || fd == -ENOSYS) return -1;
  std::vector<char> log(1 << 16);
  attr.log_level = 1;
  attr.log_buf = reinterpret_cast<uintptr_t>(log.data());
  attr.log_size = static_cast<uint32_t>(log.size());
  long again = Bpf(BPF_PROG_LOAD, &attr);
  if (again >= 0) {  // loaded the second time after all
    error->err = 0;
    error->step.clear();
    return static_cast<int>(again);
  }
  log.back() = '\0';
  error->log = log.data();
  return -1;
}

}  // namespace

const char* SockHookName(int program) {
  return program >= 0 && program < kSockHookPrograms ? kKinds[program].name : "?";
}

void SockHooksClose(SockHooks* hooks) {
  for (int& fd : hooks->progs)
    if (fd >= 0) close(fd), fd = -1;
  for (int* fd : {&hooks->uidPorts, &hooks->localAddrs, &hooks->otherPorts})
    if (*fd >= 0) close(*fd), *fd = -1;
}

bool SockHooksLoad(const SockHookRules& rules, SockHooks* hooks, SockHookError* error) {
  SockHooks made;
  made.uidPorts = MakeMap(4, 4, rules.uidEntries);
  if (made.uidPorts < 0) {
    *error = {-made.uidPorts, "bpf(BPF_MAP_CREATE uid ports)", ""};
    made.uidPorts = -1;
    return false;
  }
  made.localAddrs = MakeMap(16, 1, 1024);
  if (made.localAddrs < 0) {
    *error = {-made.localAddrs, "bpf(BPF_MAP_CREATE local addresses)", ""};
    made.localAddrs = -1;
    SockHooksClose(&made);
    return false;
  }
  made.otherPorts = MakeBitmap(kPortBitmapBytes);
  if (made.otherPorts < 0) {
    *error = {-made.otherPorts, "bpf(BPF_MAP_CREATE other backends' ports)", ""};
    made.otherPorts = -1;
    SockHooksClose(&made);
    return false;
  }
  for (int p = 0; p < kSockHookPrograms; p++) {
    Asm a;
    switch (p) {
      case kConnect4:
      case kSendmsg4: Destination4(a, rules, made); break;
      case kConnect6:
      case kSendmsg6: Destination6(a, rules, made); break;
      case kBind4: Bind(a, made, true); break;
      case kBind6: Bind(a, made, false); break;
      case kIngress: Ingress(a); break;
      default: Create(a); break;
    }
    std::vector<bpf_insn> code;
    if (!a.Finish(&code)) {
      *error = {E2BIG, std::string("assembling ") + kKinds[p].name + " (too many rules for one program)", ""};
      SockHooksClose(&made);
      return false;
    }
    made.progs[p] = LoadProgram(kKinds[p], code, error);
    if (made.progs[p] < 0) {
      SockHooksClose(&made);
      return false;
    }
  }
  *hooks = made;
  return true;
}

bool SockHooksAttach(const SockHooks& hooks, const std::string& dir, SockHookError* error) {
  int cgroup = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cgroup < 0) {
    *error = {errno, "open(" + dir + ")", ""};
    return false;
  }
  int p = 0;
  for (; p < kSockHookPrograms; p++) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.target_fd = static_cast<uint32_t>(cgroup);
    attr.attach_bpf_fd = static_cast<uint32_t>(hooks.progs[p]);
    attr.attach_type = kKinds[p].attach;
    attr.attach_flags = BPF_F_ALLOW_MULTI;
    long r = Bpf(BPF_PROG_ATTACH, &attr);
    if (r < 0) {
      *error = {static_cast<int>(-r), std::string("bpf(BPF_PROG_ATTACH ") + kKinds[p].name + ")", ""};
      break;
    }
  }
  if (p < kSockHookPrograms) {
    while (--p >= 0) {
      union bpf_attr attr;
      memset(&attr, 0, sizeof attr);
      attr.target_fd = static_cast<uint32_t>(cgroup);
      attr.attach_bpf_fd = static_cast<uint32_t>(hooks.progs[p]);
      attr.attach_type = kKinds[p].attach;
      Bpf(BPF_PROG_DETACH, &attr);
    }
  }
  close(cgroup);
  return p == kSockHookPrograms;
}

int BpfMapUpdate(int map, const void* key, const void* value) {
  union bpf_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.map_fd = static_cast<uint32_t>(map);
  attr.key = reinterpret_cast<uintptr_t>(key);
  attr.value = reinterpret_cast<uintptr_t>(value);
  attr.flags = BPF_ANY;
  long r = Bpf(BPF_MAP_UPDATE_ELEM, &attr);
  return r < 0 ? static_cast<int>(r) : 0;
}

int BpfMapDelete(int map, const void* key) {
  union bpf_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.map_fd = static_cast<uint32_t>(map);
  attr.key = reinterpret_cast<uintptr_t>(key);
  long r = Bpf(BPF_MAP_DELETE_ELEM, &attr);
  return r < 0 ? static_cast<int>(r) : 0;
}

int BpfMapKeys(int map, size_t keySize, std::vector<std::vector<uint8_t>>* keys) {
  std::vector<uint8_t> key(keySize), next(keySize);
  bool first = true;
  for (int i = 0; i < 1 << 20; i++) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_fd = static_cast<uint32_t>(map);
    attr.key = first ? 0 : reinterpret_cast<uintptr_t>(key.data());
    attr.next_key = reinterpret_cast<uintptr_t>(next.data());
    long r = Bpf(BPF_MAP_GET_NEXT_KEY, &attr);
    if (r == -ENOENT) return 0;
    if (r < 0) return static_cast<int>(r);
    keys->push_back(next);
    key = next;
    first = false;
  }
  return -E2BIG;
}

}  // namespace procyard
