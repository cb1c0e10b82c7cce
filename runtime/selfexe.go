package runtime

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// SealedSelf returns a sealed in-memory copy of the running binary.
//
// Whatever strata runs inside a container (its init, the helper of exec)
// is executed from this copy, never from the binary on the host: a
// process in the container can reach the executable of any process it
// sees through /proc/PID/exe, and could otherwise write into the host's
// strata binary (CVE-2019-5736). The seals make the copy unwritable.
func SealedSelf() (*os.File, error) {
	self, err := os.Open("/proc/self/exe")
	if err != nil {
		return nil, fmt.Errorf("open own binary: %w", err)
	}
	defer self.Close()
	fi, err := self.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat own binary: %w", err)
	}
	fd, err := unix.MemfdCreate("strata", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd for own binary: %w", err)
	}
	mem := os.NewFile(uintptr(fd), "strata-sealed")
	fail := func(err error) (*os.File, error) {
		mem.Close()
		return nil, fmt.Errorf("copy own binary: %w", err)
	}
	for off := int64(0); off < fi.Size(); {
		n, err := unix.Sendfile(fd, int(self.Fd()), &off, int(fi.Size()-off))
		if err != nil {
			return fail(err)
		}
		if n == 0 {
			return fail(fmt.Errorf("short copy at %d of %d bytes", off, fi.Size()))
		}
	}
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		return fail(fmt.Errorf("seal: %w", err))
	}
	return mem, nil
}

// sealedSelfAsync makes the sealed copy in the background; the function
// it returns waits for it.
func sealedSelfAsync() func() (*os.File, error) {
	done := make(chan struct{})
	var f *os.File
	var err error
	go func() {
		f, err = SealedSelf()
		close(done)
	}()
	return func() (*os.File, error) {
		<-done
		return f, err
	}
}
