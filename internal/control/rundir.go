package control

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// DefaultRunDir is the run dir of a cluster named name when none is
// configured: $XDG_RUNTIME_DIR/brood/<name>, or $TMPDIR/brood-<uid>/<name>
// (TMPDIR defaulting to /tmp). brood creates the last two components of this
// path itself, so Acquire and Dial hold both to the rules of a directory brood
// owns (see checkPath).
func DefaultRunDir(name string) string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "brood", name)
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("brood-%d", os.Getuid()), name)
}

// ownedComponents is how many trailing components of runDir brood creates and
// therefore must own: the run dir itself, and also its parent (brood or
// brood-<uid>) when runDir is the default run dir of name.
func ownedComponents(runDir, name string) int {
	if filepath.Clean(runDir) == filepath.Clean(DefaultRunDir(name)) {
		return 2
	}
	return 1
}

// UnsafePathError is the error of Acquire and Dial for a run dir that a user
// other than root and the run dir's owner could replace or tamper with.
type UnsafePathError struct {
	RunDir string      // the run dir being checked
	Path   string      // the offending component
	UID    int         // its owner
	Mode   fs.FileMode // its permission bits, with fs.ModeSticky if set
	Why    string      // what is wrong with it
}

// Error reads like
//
//	control: unsafe run dir /tmp/brood-0/hello: /tmp/brood-0 (owner uid 65534, mode 0777) is owned by uid 65534, not by uid 0
func (e *UnsafePathError) Error() string {
	return fmt.Sprintf("control: unsafe run dir %s: %s (owner uid %d, mode %s) %s", e.RunDir, e.Path, e.UID, octal(e.Mode), e.Why)
}

// octal renders permission bits as chmod(1) takes them: 0700, 1777.
func octal(m fs.FileMode) string {
	v := uint32(m.Perm())
	if m&fs.ModeSticky != 0 {
		v |= 0o1000
	}
	if m&fs.ModeSetgid != 0 {
		v |= 0o2000
	}
	if m&fs.ModeSetuid != 0 {
		v |= 0o4000
	}
	return fmt.Sprintf("%04o", v)
}

// pathCheck says whose directories a run dir may sit in.
type pathCheck struct {
	runDir string
	owned  int  // trailing components brood creates (see ownedComponents)
	create bool // create missing components (the master); else they are an error
	// owner is the uid the run dir itself must belong to; the other components
	// brood creates belong to os.Geteuid().
	owner int
	// trusted are the uids that may own an ancestor brood did not create (root
	// and the effective uid, plus the run dir's owner for a root client).
	trusted []int
}

// checkPath walks every component of c.runDir from the root, the way
// OpenSSH's safe_path does, and returns nil if nobody but the trusted uids can
// replace any of them:
//
//   - every ancestor is a directory owned by a trusted uid and not writable by
//     group or others, unless it has the sticky bit (like /tmp);
//   - a symbolic link among the ancestors is followed only if it is owned by a
//     trusted uid (it then sits in a directory already found safe), and every
//     component of its target is checked in turn;
//   - the components brood creates are never symbolic links, belong to the
//     expected owner and are not writable by group or others.
//
// Missing components are created one at a time with mode 0700 if c.create is
// set (and then checked like the others); otherwise the error wraps
// fs.ErrNotExist.
func (c *pathCheck) checkPath() error {
	abs, err := filepath.Abs(c.runDir)
	if err != nil {
		return fmt.Errorf("control: run dir %s: %w", c.runDir, err)
	}
	comps := strings.Split(strings.TrimPrefix(abs, "/"), "/")
	if err := c.checkReal("/"); err != nil {
		return err
	}
	cur := "/"
	for i, comp := range comps {
		next := filepath.Join(cur, comp)
		owned := i >= len(comps)-c.owned
		fi, err := os.Lstat(next)
		if errors.Is(err, fs.ErrNotExist) && c.create {
			if err := os.Mkdir(next, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("control: create run dir %s: %w", next, err)
			}
			fi, err = os.Lstat(next) // whoever made it, it is checked below
		}
		if err != nil {
			return fmt.Errorf("control: run dir %s: %w", c.runDir, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("control: run dir %s: no owner information for %s", c.runDir, next)
		}
		uid := int(st.Uid)
		bad := func(why string) error {
			return &UnsafePathError{RunDir: c.runDir, Path: next, UID: uid, Mode: fi.Mode() & (fs.ModePerm | fs.ModeSticky | fs.ModeSetgid | fs.ModeSetuid), Why: why}
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0 && owned:
			return bad("is a symbolic link; brood does not follow links in the directories it creates")
		case fi.Mode()&fs.ModeSymlink != 0:
			if !c.isTrusted(uid) {
				return bad("is a symbolic link not owned by " + c.trustedText())
			}
			real, err := filepath.EvalSymlinks(next)
			if err != nil {
				return fmt.Errorf("control: run dir %s: resolve %s: %w", c.runDir, next, err)
			}
			if err := c.checkReal(real); err != nil {
				return err
			}
			cur = real
			continue
		case !fi.IsDir():
			return bad("is not a directory")
		case owned:
			want := os.Geteuid()
			if i == len(comps)-1 {
				want = c.owner
			}
			if uid != want {
				return bad(fmt.Sprintf("is owned by uid %d, not by uid %d", uid, want))
			}
			if fi.Mode().Perm()&0o022 != 0 {
				return bad("is writable by group or others")
			}
		default:
			if err := c.checkAncestor(fi, uid, bad); err != nil {
				return err
			}
		}
		cur = next
	}
	return nil
}

// checkReal checks every component of real, a path without symbolic links
// (the root, or what EvalSymlinks returned), as an ancestor.
func (c *pathCheck) checkReal(real string) error {
	p := "/"
	comps := strings.Split(strings.TrimPrefix(real, "/"), "/")
	for i := -1; i < len(comps); i++ {
		if i >= 0 {
			if comps[i] == "" {
				continue
			}
			p = filepath.Join(p, comps[i])
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("control: run dir %s: %w", c.runDir, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("control: run dir %s: no owner information for %s", c.runDir, p)
		}
		uid := int(st.Uid)
		bad := func(why string) error {
			return &UnsafePathError{RunDir: c.runDir, Path: p, UID: uid, Mode: fi.Mode() & (fs.ModePerm | fs.ModeSticky | fs.ModeSetgid | fs.ModeSetuid), Why: why}
		}
		if !fi.IsDir() { // a link here appeared after EvalSymlinks resolved it
			return bad("is not a directory")
		}
		if err := c.checkAncestor(fi, uid, bad); err != nil {
			return err
		}
	}
	return nil
}

// checkAncestor applies the rule for a directory brood did not create.
func (c *pathCheck) checkAncestor(fi fs.FileInfo, uid int, bad func(string) error) error {
	if !c.isTrusted(uid) {
		return bad(fmt.Sprintf("is owned by uid %d, not by %s", uid, c.trustedText()))
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return bad("is writable by group or others and has no sticky bit")
	}
	return nil
}

func (c *pathCheck) isTrusted(uid int) bool {
	for _, t := range c.trusted {
		if uid == t {
			return true
		}
	}
	return false
}

func (c *pathCheck) trustedText() string {
	seen := map[int]bool{}
	var s []string
	for _, t := range c.trusted {
		if !seen[t] {
			seen[t] = true
			s = append(s, fmt.Sprintf("uid %d", t))
		}
	}
	return strings.Join(s, " or ")
}

// PrepareRunDir creates runDir as needed (each missing component brood owns
// with mode 0700) and checks its whole path as Acquire does: for a process
// about to put files there before the master takes it (`start --daemon`'s
// fallback log directory).
func PrepareRunDir(runDir, name string) error { return prepareRunDir(runDir, name) }

// prepareRunDir creates runDir as needed and checks it for a master (Acquire):
// its owner must be this process's effective uid.
func prepareRunDir(runDir, name string) error {
	euid := os.Geteuid()
	c := &pathCheck{runDir: runDir, owned: ownedComponents(runDir, name), create: true, owner: euid, trusted: []int{0, euid}}
	return c.checkPath()
}

// checkClientRunDir checks runDir for a client (Dial) and returns the uid that
// owns it, which the server must run as. The owner must be the effective uid,
// except that root may talk to a master whose uid owns the run dir (the
// directories above it may then belong to that uid too).
func checkClientRunDir(runDir, name string) (owner int, err error) {
	euid := os.Geteuid()
	owner = euid
	if euid == 0 {
		fi, err := os.Lstat(runDir)
		if err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				owner = int(st.Uid)
			}
		}
	}
	c := &pathCheck{runDir: runDir, owned: ownedComponents(runDir, name), owner: owner, trusted: []int{0, euid, owner}}
	if err := c.checkPath(); err != nil {
		return 0, err
	}
	return owner, nil
}
