// Package runtime owns the container lifecycle: namespaces, mounts,
// pivot_root, users, capabilities, cgroups, signals, TTY, logs and exec.
package runtime
