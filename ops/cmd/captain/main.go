// Command captain is Captain's operator command line.
package main

import (
	"fmt"
	"os"
	_ "time/tzdata" // time windows name IANA zones; hosts without tzdata must still validate them

	"github.com/captain-cd/captain/ops/cli"
)

func main() {
	if err := cli.NewRootCommand().Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "captain: %v\n", err)
		os.Exit(1)
	}
}
