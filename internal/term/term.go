// Package term puts the user's terminal in raw mode and carries its size,
// for containers given a terminal of their own (run -t, exec -t).
package term

import (
	"golang.org/x/sys/unix"
)

// IsTerminal tells whether fd is a terminal.
func IsTerminal(fd uintptr) bool {
	_, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
	return err == nil
}

// MakeRaw puts the terminal at fd in raw mode, as cfmakeraw(3) does, so
// that every key reaches the container's terminal, which has a line
// discipline of its own. restore puts the old mode back.
func MakeRaw(fd uintptr) (restore func() error, err error) {
	old, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
	if err != nil {
		return nil, err
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN] = 1
	raw.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(int(fd), unix.TCSETS, &raw); err != nil {
		return nil, err
	}
	return func() error { return unix.IoctlSetTermios(int(fd), unix.TCSETS, old) }, nil
}

// CopySize gives the terminal at to the size of the one at from.
func CopySize(to, from uintptr) error {
	ws, err := unix.IoctlGetWinsize(int(from), unix.TIOCGWINSZ)
	if err != nil {
		return err
	}
	return unix.IoctlSetWinsize(int(to), unix.TIOCSWINSZ, ws)
}
