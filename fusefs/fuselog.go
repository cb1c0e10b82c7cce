package fusefs

import (
	"context"
	"log"
	"log/slog"
	"strings"
)

// fuseLogger carries go-fuse's log lines to l instead of the process's
// stderr, where a container's output goes. A read that fails because the
// connection was aborted as the container's mount namespace ended
// (ECONNABORTED on some kernels, where others say ENODEV, which go-fuse
// takes silently) is the normal end of a server, and only a debug line.
func fuseLogger(l *slog.Logger) *log.Logger {
	return log.New(fuseLogWriter{l}, "", 0)
}

type fuseLogWriter struct{ l *slog.Logger }

func (w fuseLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	level := slog.LevelWarn
	if strings.Contains(msg, "connection abort") {
		level = slog.LevelDebug
	}
	w.l.Log(context.Background(), level, "fuse: "+msg)
	return len(p), nil
}
