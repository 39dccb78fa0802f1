// Command restart restarts one unit through hostsystemd.Restarter; the systemd tests run it
// inside a container booted with real systemd.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/captain-cd/captain/agent/hostsystemd"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: restart UNIT")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := hostsystemd.NewRestarter().Restart(ctx, os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		cancel()
		os.Exit(1)
	}
	fmt.Println("restarted")
}
