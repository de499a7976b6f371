#pragma once

namespace procyard {
// Binds and listens on 127.0.0.1:port; returns the fd (O_CLOEXEC) or -errno.
// Holding the listener keeps the port ours until the worker is cloned.
int ReservePort(int port);
}  // namespace procyard
