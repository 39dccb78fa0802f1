//go:build !linux

package extract

import "os"

// syncTree fsyncs every file and directory written, where syncfs is not available.
func syncTree(root *os.Root, names []string) error {
	for _, n := range names {
		f, err := root.Open(n)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
