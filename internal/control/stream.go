package control

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// maxStreamLine bounds one line of a streamed response.
const maxStreamLine = 1 << 20

// Stream sends a GET for path and calls each for every line of a 2xx
// response body as it arrives, until the body ends, ctx is done (then it
// returns nil) or each returns an error (returned). A non-2xx response is a
// *StatusError, as with Do.
func (c *Client) Stream(ctx context.Context, path string, each func(line []byte) error) error {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://control"+path, nil)
	if err != nil {
		return fmt.Errorf("control: GET %s: %w", path, err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		var nr *notRunningError
		if errors.As(err, &nr) {
			return nr
		}
		return fmt.Errorf("control: GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
		return &StatusError{Method: "GET", Path: path, Status: resp.StatusCode, Message: errorMessage(resp.StatusCode, b)}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxStreamLine)
	for sc.Scan() {
		if err := each(sc.Bytes()); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("control: GET %s: %w", path, err)
	}
	return nil
}
