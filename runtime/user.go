package runtime

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// execUser is who the command runs as.
type execUser struct {
	uid, gid int
	groups   []int
	home     string
}

type passwdEntry struct {
	name     string
	uid, gid int
	home     string
}

type groupEntry struct {
	name    string
	gid     int
	members []string
}

func parsePasswd(r io.Reader) []passwdEntry {
	var out []passwdEntry
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 7 || strings.HasPrefix(f[0], "#") {
			continue
		}
		uid, err1 := strconv.Atoi(f[2])
		gid, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, passwdEntry{name: f[0], uid: uid, gid: gid, home: f[5]})
	}
	return out
}

func parseGroup(r io.Reader) []groupEntry {
	var out []groupEntry
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 4 || strings.HasPrefix(f[0], "#") {
			continue
		}
		gid, err := strconv.Atoi(f[2])
		if err != nil {
			continue
		}
		var members []string
		if f[3] != "" {
			members = strings.Split(f[3], ",")
		}
		out = append(out, groupEntry{name: f[0], gid: gid, members: members})
	}
	return out
}

func readDB[T any](root int, p string, parse func(io.Reader) []T) []T {
	fd, err := openInWith(root, p, unix.O_RDONLY)
	if err != nil {
		return nil
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	return parse(f)
}

// resolveUser reads the container's own /etc/passwd and /etc/group in
// its root, as docker does: names must exist there, numbers need not.
func resolveUser(spec string, root int) (*execUser, error) {
	return lookupUser(spec, readDB(root, "/etc/passwd", parsePasswd), readDB(root, "/etc/group", parseGroup))
}

func lookupUser(spec string, users []passwdEntry, groups []groupEntry) (*execUser, error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	u := &execUser{home: "/"}
	var pw *passwdEntry
	if userPart == "" {
		userPart = "0"
	}
	if uid, err := strconv.Atoi(userPart); err == nil {
		if uid < 0 {
			return nil, &InitError{Code: 125, Msg: fmt.Sprintf("invalid user %q", spec)}
		}
		u.uid = uid
		for i := range users {
			if users[i].uid == uid {
				pw = &users[i]
				break
			}
		}
	} else {
		for i := range users {
			if users[i].name == userPart {
				pw = &users[i]
				break
			}
		}
		if pw == nil {
			return nil, &InitError{Code: 125, Msg: fmt.Sprintf("unable to find user %s: no matching entries in passwd file", userPart)}
		}
		u.uid = pw.uid
	}
	if pw != nil {
		u.gid, u.home = pw.gid, pw.home
		// Supplementary groups: those that list the user (only when the
		// group is not given, as docker does).
		if !hasGroup {
			for _, g := range groups {
				if slices.Contains(g.members, pw.name) && !slices.Contains(u.groups, g.gid) {
					u.groups = append(u.groups, g.gid)
				}
			}
		}
	}
	if hasGroup {
		if gid, err := strconv.Atoi(groupPart); err == nil {
			if gid < 0 {
				return nil, &InitError{Code: 125, Msg: fmt.Sprintf("invalid group %q", spec)}
			}
			u.gid = gid
		} else {
			found := false
			for _, g := range groups {
				if g.name == groupPart {
					u.gid, found = g.gid, true
					break
				}
			}
			if !found {
				return nil, &InitError{Code: 125, Msg: fmt.Sprintf("unable to find group %s: no matching entries in group file", groupPart)}
			}
		}
	}
	if u.groups == nil {
		u.groups = []int{}
	}
	return u, nil
}
