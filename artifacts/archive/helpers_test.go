package archive_test

import (
	"syscall"
	"time"
)

func zeroTime() time.Time { return time.Unix(1_000_000, 0) }

func mkfifo(p string) error { return syscall.Mkfifo(p, 0o644) }
