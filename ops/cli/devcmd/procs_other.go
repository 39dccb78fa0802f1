//go:build !linux

package devcmd

import "syscall"

// childAttr puts a child in its own process group, so that a Ctrl-C reaches only `captain dev`,
// which stops the children in order.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
