package runtime

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"

	"golang.org/x/sys/unix"
)

// setupTerminal gives this process a new terminal of the container's own
// /dev/pts as descriptors 0-2 and controlling terminal, owned by uid, and
// sends its master side to the starter over the socket sock.
func setupTerminal(sock, uid int, size *ConsoleSize) error {
	master, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("terminal: open /dev/ptmx: %w", err)
	}
	defer unix.Close(master)
	if err := unix.IoctlSetPointerInt(master, unix.TIOCSPTLCK, 0); err != nil {
		return fmt.Errorf("terminal: unlock: %w", err)
	}
	n, err := unix.IoctlGetUint32(master, unix.TIOCGPTN)
	if err != nil {
		return fmt.Errorf("terminal: number: %w", err)
	}
	name := "/dev/pts/" + strconv.Itoa(int(n))
	slave, err := unix.Open(name, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("terminal: open %s: %w", name, err)
	}
	defer unix.Close(slave)
	// Group tty (devpts gid=5) stays.
	if err := unix.Fchown(slave, uid, -1); err != nil {
		return fmt.Errorf("terminal: chown %s: %w", name, err)
	}
	if size != nil {
		ws := &unix.Winsize{Row: size.Height, Col: size.Width}
		if err := unix.IoctlSetWinsize(master, unix.TIOCSWINSZ, ws); err != nil {
			return fmt.Errorf("terminal: size: %w", err)
		}
	}
	if err := sendFd(sock, master); err != nil {
		return fmt.Errorf("terminal: send to strata: %w", err)
	}
	for fd := 0; fd <= 2; fd++ {
		if err := unix.Dup3(slave, fd, 0); err != nil {
			return fmt.Errorf("terminal: %w", err)
		}
	}
	if err := unix.IoctlSetInt(0, unix.TIOCSCTTY, 0); err != nil {
		return fmt.Errorf("terminal: make it the controlling one: %w", err)
	}
	return nil
}

// TerminalSize is the size of the terminal at fd, nil if it is none.
func TerminalSize(f *os.File) *ConsoleSize {
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return nil
	}
	return &ConsoleSize{Height: ws.Row, Width: ws.Col}
}

// FollowTerminalSize gives console the size of terminal whenever that
// changes (SIGWINCH), until stop is called.
func FollowTerminalSize(console, terminal *os.File) (stop func()) {
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, unix.SIGWINCH)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-winch:
				if ws, err := unix.IoctlGetWinsize(int(terminal.Fd()), unix.TIOCGWINSZ); err == nil {
					unix.IoctlSetWinsize(int(console.Fd()), unix.TIOCSWINSZ, ws)
				}
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(winch)
		close(done)
	}
}
