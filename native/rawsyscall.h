// A system call for code that runs in a clone child sharing the parent's
// memory (spawn.cc, mountinject.cc): the result or -errno, never errno
// (which lives in the thread's TLS, the parent's), and no glibc wrapper (a
// lazily bound one resolves its symbol on the child's small stack).
#pragma once

namespace procyard {

inline long Sys(long n, long a = 0, long b = 0, long c = 0, long d = 0, long e = 0) {
#if defined(__x86_64__)
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  long ret;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
                   : "rcx", "r11", "memory");
  return ret;
#elif defined(__aarch64__)
  register long x8 __asm__("x8") = n;
  register long x0 __asm__("x0") = a;
  register long x1 __asm__("x1") = b;
  register long x2 __asm__("x2") = c;
  register long x3 __asm__("x3") = d;
  register long x4 __asm__("x4") = e;
  __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4) : "memory");
  return x0;
#else
#error "procyard's clone children need a raw system call for this architecture"
#endif
}

// Sys's result is an error: -4095..-1.
inline bool Failed(long ret) { return ret < 0 && ret > -4096; }

}  // namespace procyard
