package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
)

// mountID names a strata mount's pin and log by its directory.
func mountID(dir string) string {
	h := sha256.Sum256([]byte(dir))
	return hex.EncodeToString(h[:8])
}

func umountVerb() *verb {
	return &verb{name: "umount", args: "DIR", summary: "Unmount a strata mount", minArgs: 1, maxArgs: 1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			lazy := fs.BoolP("lazy", "l", false, "detach now, clean up when no longer busy")
			return func(ctx context.Context, a *app, args []string) error {
				dir, err := filepath.Abs(args[0])
				if err != nil {
					return err
				}
				flags := 0
				if *lazy {
					flags = unix.MNT_DETACH
				}
				if err := unix.Unmount(dir, flags); err != nil {
					if errors.Is(err, unix.EPERM) {
						if out, ferr := exec.Command("fusermount3", "-u", dir).CombinedOutput(); ferr == nil {
							return nil
						} else {
							return fmt.Errorf("umount %s: %s", dir, strings.TrimSpace(string(out)))
						}
					}
					if errors.Is(err, unix.EINVAL) {
						return fmt.Errorf("umount %s: not a mount point", args[0])
					}
					return fmt.Errorf("umount %s: %w", args[0], err)
				}
				// The server exits once the kernel tells it; give it a moment
				// so a following rmi sees the image unpinned.
				deadline := time.Now().Add(2 * time.Second)
				for time.Now().Before(deadline) {
					if _, err := os.Stat(filepath.Join(a.root, "pins", "mount-"+mountID(dir)+".pin")); os.IsNotExist(err) {
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
				return nil
			}
		}}
}
