// Package fusefs is strata's union filesystem: a stack of read-only layer
// trees under one writable upper directory, served through FUSE.
package fusefs
