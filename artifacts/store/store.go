// Package store keeps artifact objects in any S3-compatible bucket through minio-go.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Sentinel errors; match them with errors.Is.
var (
	ErrNotFound     = errors.New("object not found")
	ErrExists       = errors.New("object already exists")
	ErrAccessDenied = errors.New("S3 refused the credentials")
	ErrNoBucket     = errors.New("bucket does not exist")
)

// Config says where the bucket is and how to authenticate.
type Config struct {
	// Endpoint is a URL (http://127.0.0.1:7070) or host[:port] (https is assumed).
	// Empty means AWS S3 in Region.
	Endpoint string
	Region   string
	Bucket   string
	// Credentials defaults to the standard chain: AWS env vars, MinIO env vars, the shared
	// AWS credentials file, the mc config file, then the EC2/ECS instance role.
	Credentials *credentials.Credentials
	// Transport overrides the HTTP transport (tests use it to inject faults).
	Transport http.RoundTripper
}

// DefaultCredentials is minio-go's standard provider chain.
func DefaultCredentials() *credentials.Credentials {
	return credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.EnvMinio{},
		&credentials.FileAWSCredentials{},
		&credentials.FileMinioClient{},
		&credentials.IAM{Client: &http.Client{Transport: http.DefaultTransport}},
	})
}

// Store is one bucket.
type Store struct {
	core   minio.Core
	bucket string
	desc   string
}

// New builds a client; it does not contact the server.
func New(cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("no bucket given: pass --bucket")
	}
	host, secure := "s3.amazonaws.com", true
	if cfg.Region != "" && cfg.Endpoint == "" {
		host = "s3." + cfg.Region + ".amazonaws.com"
	}
	if cfg.Endpoint != "" {
		if strings.Contains(cfg.Endpoint, "://") {
			u, err := url.Parse(cfg.Endpoint)
			if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
				return nil, fmt.Errorf("S3 endpoint %q: want http(s)://host[:port] or host[:port]", cfg.Endpoint)
			}
			host, secure = u.Host, u.Scheme == "https"
		} else {
			host = cfg.Endpoint
		}
	}
	creds := cfg.Credentials
	if creds == nil {
		creds = DefaultCredentials()
	}
	c, err := minio.NewCore(host, &minio.Options{
		Creds:     creds,
		Secure:    secure,
		Region:    cfg.Region,
		Transport: cfg.Transport,
		// Retries belong to the caller (fetch has a bounded, context-aware policy); minio's own
		// retry loop would multiply with it and hide a dead endpoint for a long time.
		MaxRetries:   1,
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		return nil, fmt.Errorf("create S3 client for %s: %w", host, err)
	}
	scheme := "https"
	if !secure {
		scheme = "http"
	}
	return &Store{core: *c, bucket: cfg.Bucket, desc: scheme + "://" + host + "/" + cfg.Bucket}, nil
}

// Bucket returns the bucket name.
func (s *Store) Bucket() string { return s.bucket }

// PutOptions tune one upload.
type PutOptions struct {
	ContentType string
	// Progress receives a Read call with the number of bytes sent so far (minio-go's hook).
	Progress io.Reader
	// PartSize above which the upload is multipart; zero uses minio-go's default (16 MiB).
	PartSize uint64
}

// PutIfAbsent uploads r under key only if no object exists there (If-None-Match: *).
// It returns ErrExists if one does.
func (s *Store) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64, opts PutOptions) error {
	po := minio.PutObjectOptions{ContentType: opts.ContentType, Progress: opts.Progress, PartSize: opts.PartSize}
	po.SetMatchETagExcept("*")
	_, err := s.core.Client.PutObject(ctx, s.bucket, key, r, size, po)
	if err != nil {
		return s.wrap("upload", key, err)
	}
	return nil
}

// Info describes a stored object.
type Info struct {
	Size int64
	ETag string
}

// Stat returns the object's size, or ErrNotFound.
func (s *Store) Stat(ctx context.Context, key string) (Info, error) {
	oi, err := s.core.Client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return Info{}, s.wrap("stat", key, err)
	}
	return Info{Size: oi.Size, ETag: oi.ETag}, nil
}

// Get opens the object from byte offset on. The request is made before Get returns, so
// missing objects and bad credentials surface here, not on the first Read.
func (s *Store) Get(ctx context.Context, key string, offset int64) (io.ReadCloser, int64, error) {
	opts := minio.GetObjectOptions{}
	if offset > 0 {
		if err := opts.SetRange(offset, 0); err != nil {
			return nil, 0, err
		}
	}
	rc, oi, _, err := s.core.GetObject(ctx, s.bucket, key, opts)
	if err != nil {
		return nil, 0, s.wrap("download", key, err)
	}
	return rc, oi.Size, nil
}

// ReadAll downloads a small object whole, refusing more than limit bytes.
func (s *Store) ReadAll(ctx context.Context, key string, limit int64) ([]byte, error) {
	rc, _, err := s.Get(ctx, key, 0)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, fmt.Errorf("download s3://%s/%s: %w", s.bucket, key, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("s3://%s/%s is larger than %d bytes: not a manifest or signature captain wrote", s.bucket, key, limit)
	}
	return b, nil
}

// PresignGet returns a URL that downloads key without credentials until expiry.
func (s *Store) PresignGet(ctx context.Context, key string, expiry time.Duration) (*url.URL, error) {
	u, err := s.core.Client.PresignedGetObject(ctx, s.bucket, key, expiry, nil)
	if err != nil {
		return nil, s.wrap("presign", key, err)
	}
	return u, nil
}

// wrap turns S3 error codes into sentinels with a message that says what to do.
func (s *Store) wrap(op, key string, err error) error {
	if err == nil {
		return nil
	}
	er := minio.ToErrorResponse(err)
	obj := "s3://" + s.bucket + "/" + key
	switch er.Code {
	case "NoSuchKey":
		return fmt.Errorf("%s %s: %w", op, obj, ErrNotFound)
	case "NoSuchBucket":
		return fmt.Errorf("%s %s: %w: create bucket %q or pass the right --bucket", op, obj, ErrNoBucket, s.bucket)
	case "PreconditionFailed":
		return fmt.Errorf("%s %s: %w", op, obj, ErrExists)
	// versitygw answers an unknown access key with XAdminUserNotFound (HTTP 404).
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken", "XAdminUserNotFound":
		return fmt.Errorf("%s %s at %s: %w (%s: %s); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials or the instance role", op, obj, s.desc, ErrAccessDenied, er.Code, er.Message)
	}
	if er.Code == "" && er.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%s %s: %w", op, obj, ErrNotFound)
	}
	if er.StatusCode == http.StatusPreconditionFailed {
		return fmt.Errorf("%s %s: %w", op, obj, ErrExists)
	}
	if er.StatusCode == http.StatusForbidden {
		return fmt.Errorf("%s %s at %s: %w (HTTP 403); check the credentials and the bucket policy", op, obj, s.desc, ErrAccessDenied)
	}
	return fmt.Errorf("%s %s at %s: %w", op, obj, s.desc, err)
}

// Transient reports whether err is worth retrying: the endpoint was unreachable, dropped the
// connection, timed out or answered 5xx. Refusals (credentials, missing objects) are not.
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	for _, final := range []error{ErrNotFound, ErrExists, ErrAccessDenied, ErrNoBucket} {
		if errors.Is(err, final) {
			return false
		}
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) && er.Code != "" {
		switch er.Code {
		case "SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed":
			return true
		}
		return er.StatusCode >= 500
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, t := range []error{syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.EPIPE, syscall.ECONNABORTED, io.ErrUnexpectedEOF, io.EOF} {
		if errors.Is(err, t) {
			return true
		}
	}
	var oe *net.OpError
	return errors.As(err, &oe)
}
