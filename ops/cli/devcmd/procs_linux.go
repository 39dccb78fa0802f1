package devcmd

import "syscall"

// childAttr puts a child in its own process group, so that a Ctrl-C reaches only `captain dev`,
// which stops the children in order; and asks the kernel to send it SIGTERM should `captain dev`
// die without its teardown (SIGKILL, a crash), so that no coordinator or agent outlives it.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
