package runtime

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/fsutil"
)

// detachedMount makes the mount m describes from the device dev (an open
// /dev/fuse), attached nowhere (fsopen, fsmount: Linux 5.2), for init to
// attach in the container's mount namespace (DeviceMount.Attach).
//
// Made here, the file system's superblock exists before init reaches it:
// the kernel sends the server its INIT now, and the server answers it
// while init starts. Mounted by init (mount(2)), INIT went out only then,
// and init's first lookup in the root waited for the monitor to wake, take
// up serving and answer it: 0.3–0.4 ms of every start here.
func detachedMount(m *DeviceMount, dev *os.File) (*os.File, error) {
	attrs, ok := mountAttrs(m.Flags)
	if !ok {
		return nil, fmt.Errorf("mount flags %#x: %w", m.Flags, errors.ErrUnsupported)
	}
	fstype, subtype, _ := strings.Cut(m.FSType, ".")
	params := [][2]string{{"source", m.Source}}
	if subtype != "" {
		params = append(params, [2]string{"subtype", subtype})
	}
	for _, o := range strings.Split(fmt.Sprintf(m.Data, dev.Fd()), ",") {
		k, v, _ := strings.Cut(o, "=")
		params = append(params, [2]string{k, v})
	}
	mfd, err := fsutil.Fsmount(fstype, params, attrs)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(mfd), "rootfs mount"), nil
}

// mountAttrs turns mount(2) flags into fsmount's attributes; ok is false
// for flags it has none for (those of the superblock: sync, dirsync,
// lazytime, mandlock).
func mountAttrs(flags uintptr) (attrs int, ok bool) {
	for _, f := range []struct {
		ms   uintptr
		attr int
	}{
		{unix.MS_RDONLY, unix.MOUNT_ATTR_RDONLY}, {unix.MS_NOSUID, unix.MOUNT_ATTR_NOSUID},
		{unix.MS_NODEV, unix.MOUNT_ATTR_NODEV}, {unix.MS_NOEXEC, unix.MOUNT_ATTR_NOEXEC},
		{unix.MS_NOATIME, unix.MOUNT_ATTR_NOATIME}, {unix.MS_NODIRATIME, unix.MOUNT_ATTR_NODIRATIME},
		{unix.MS_STRICTATIME, unix.MOUNT_ATTR_STRICTATIME},
		{unix.MS_RELATIME, unix.MOUNT_ATTR_RELATIME}, {unix.MS_SILENT, 0},
	} {
		if flags&f.ms != 0 {
			attrs |= f.attr
			flags &^= f.ms
		}
	}
	return attrs, flags == 0
}

// attachRootfs attaches the detached mount fd at dir.
func attachRootfs(fd int, dir string) error {
	err := unix.MoveMount(fd, "", unix.AT_FDCWD, dir, unix.MOVE_MOUNT_F_EMPTY_PATH)
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("init: attach the root filesystem: %w", err)
	}
	return nil
}

// startByte begins the spec's stream: a space, which the JSON decoder of
// an init from before it skips, so that init still reads the spec's
// protocol number and refuses it plainly.
const startByte = ' '

// sendStart begins the spec's stream with startByte, and with it the
// descriptor f when not nil (init's receiveStart).
func sendStart(sock *os.File, f *os.File) error {
	var rights []byte
	if f != nil {
		rights = unix.UnixRights(int(f.Fd()))
	}
	for {
		err := unix.Sendmsg(int(sock.Fd()), []byte{startByte}, rights, nil, 0)
		if err != unix.EINTR {
			return err
		}
	}
}

// receiveStart takes the byte sendStart sent, and the descriptor with it
// (-1 for none). From a strata before it, the byte is the spec's first:
// rest is what to read the spec from.
func receiveStart(sock *os.File) (fd int, rest io.Reader, err error) {
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(int(sock.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return -1, nil, err
		case n == 0:
			return -1, nil, errors.New("no spec")
		case buf[0] != startByte:
			return -1, io.MultiReader(bytes.NewReader(buf), sock), nil
		case oobn == 0:
			return -1, sock, nil
		}
		fd, err := oneFd(oob[:oobn])
		if err != nil {
			return -1, nil, fmt.Errorf("spec: bad descriptor message (%v)", err)
		}
		return fd, sock, nil
	}
}
