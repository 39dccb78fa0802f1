package manifest

import (
	"errors"
	"path"
	"strings"
)

// ErrLinkEscapes means a symlink, followed through the other symlinks of the tree, resolves
// outside the root.
var ErrLinkEscapes = errors.New("symlink target escapes the release directory")

// maxLinkHops bounds symlink expansion like the kernel's ELOOP limit.
const maxLinkHops = 40

// CheckSymlink resolves the symlink at linkPath with the given target lexically, relative to
// the link's directory, expanding any component that is itself a symlink according to
// symlinkTarget, and returns ErrLinkEscapes if any step leaves the root. Expanding earlier
// links matters: "d/a -> ../x" is fine on its own, but not if "d" is a link to ".." .
func CheckSymlink(linkPath, target string, symlinkTarget func(p string) (string, bool)) error {
	if target == "" {
		return errors.New("symlink target is empty")
	}
	if strings.HasPrefix(target, "/") {
		return ErrLinkEscapes
	}
	var stack []string
	if d := path.Dir(linkPath); d != "." {
		stack = strings.Split(d, "/")
	}
	queue := strings.Split(target, "/")
	hops := 0
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) == 0 {
				return ErrLinkEscapes
			}
			stack = stack[:len(stack)-1]
			continue
		}
		stack = append(stack, c)
		cur := strings.Join(stack, "/")
		var t string
		var ok bool
		if cur == linkPath {
			t, ok = target, true
		} else {
			t, ok = symlinkTarget(cur)
		}
		if !ok {
			continue
		}
		if hops++; hops > maxLinkHops {
			return errors.New("symlink chain is longer than 40 links or loops")
		}
		if strings.HasPrefix(t, "/") {
			return ErrLinkEscapes
		}
		stack = stack[:len(stack)-1]
		queue = append(strings.Split(t, "/"), queue...)
	}
	return nil
}
