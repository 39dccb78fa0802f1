package api_test

import (
	"io"
	"net/http"
)

func readAll(res *http.Response, buf []byte) (int, error) {
	n, err := io.ReadFull(res.Body, buf)
	if err == io.ErrUnexpectedEOF || err == io.EOF {
		err = nil
	}
	return n, err
}
