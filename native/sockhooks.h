// The tenant network's cgroup socket hooks (SPEC §11): eBPF programs of type
// BPF_PROG_TYPE_CGROUP_SOCK_ADDR (connect, UDP send, bind), CGROUP_SKB
// (ingress) and CGROUP_SOCK (socket creation), assembled here from a rule table, loaded through the kernel's
// verifier and attached to a cgroup2 directory. No napi here (the glue is
// binding_sockhooks.cc).
#pragma once

#include <stdint.h>

#include <string>
#include <vector>

namespace procyard {

// A destination: any local address of the host, or a network; with a port span.
struct AddrRule {
  bool local = false;    // 127.0.0.0/8, 0.0.0.0/8, ::1, ::, the addresses in the local map
  int family = 4;        // 4 or 6, for !local
  uint8_t addr[16] = {}; // network bytes (4 used for IPv4), host bits zero
  int prefix = 0;        // 0-32 or 0-128
  uint16_t portLo = 0;   // 0-65535 is every port
  uint16_t portHi = 65535;
};

struct PortSpan {
  uint16_t lo, hi;
};

struct SockHookRules {
  PortSpan workerPorts{0, 0};         // refused on local addresses: the workers' ports
  std::vector<AddrRule> deny;         // refused
  bool allowOnly = false;             // then only `allow` may be reached
  std::vector<AddrRule> allow;
  bool tcpPortsOnly = false;          // then TCP connects go only to tcpPorts
  std::vector<PortSpan> tcpPorts;
  uint32_t uidEntries = 1024;         // capacity of the uid → port map
};

// The programs, in the order SockHooks::progs holds them.
enum SockHookProgram { kConnect4, kConnect6, kSendmsg4, kSendmsg6, kBind4, kBind6, kIngress, kSockCreate, kSockHookPrograms };
const char* SockHookName(int program);

struct SockHooks {
  int uidPorts = -1;    // BPF hash map: worker UID (u32) → the one port it binds (u32, host order)
  int localAddrs = -1;  // BPF hash map: host address (16 bytes, IPv4 as ::ffff:a.b.c.d) → 1
  int otherPorts = -1;  // BPF array map, one entry (key 0): a bitmap of the ports of other backends' workers on this host
  int progs[kSockHookPrograms] = {-1, -1, -1, -1, -1, -1, -1, -1};
};

// The otherPorts bitmap's size: a bit per port, bit p & 7 of byte p >> 3.
const uint32_t kPortBitmapBytes = 65536 / 8;

struct SockHookError {
  int err = 0;
  std::string step;  // "bpf(BPF_PROG_LOAD connect4)", "bpf(BPF_PROG_ATTACH bind6)", ...
  std::string log;   // the verifier's log, when it refused a program
};

// Makes the maps and loads every program; on failure closes what it made.
bool SockHooksLoad(const SockHookRules& rules, SockHooks* hooks, SockHookError* error);

// Attaches every program to the cgroup2 directory `dir` (BPF_F_ALLOW_MULTI:
// programs above or below it keep running too). On failure, detaches what it attached.
bool SockHooksAttach(const SockHooks& hooks, const std::string& dir, SockHookError* error);

void SockHooksClose(SockHooks* hooks);

// BPF_MAP_UPDATE_ELEM / BPF_MAP_DELETE_ELEM; -errno on failure (ENOENT for a missing key).
int BpfMapUpdate(int map, const void* key, const void* value);
int BpfMapDelete(int map, const void* key);
// Every key of a map (keySize bytes each), for replacing its contents.
int BpfMapKeys(int map, size_t keySize, std::vector<std::vector<uint8_t>>* keys);

}  // namespace procyard
