{
  "targets": [
    {
      "target_name": "procyard",
      "sources": [
        "native/addon.cc",
        "native/binding_spawn.cc",
        "native/binding_misc.cc",
        "native/spawn.cc",
        "native/probe.cc",
        "native/bitset.cc",
        "native/procstat.cc",
        "native/port.cc",
        "native/seccomp.cc",
        "native/memfd.cc",
        "native/mounttarget.cc",
        "native/landlock.cc",
        "native/binding_landlock.cc",
        "native/lockfile.cc",
        "native/binding_lockfile.cc",
        "native/cgroup.cc",
        "native/binding_cgroup.cc",
        "native/sockdiag.cc",
        "native/sockhooks.cc",
        "native/binding_sockhooks.cc",
        "native/mountinject.cc",
        "native/binding_mountinject.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-fexceptions"],
      "conditions": [["OS!='linux'", { "type": "none" }]]
    }
  ]
}
