// Package config reads the agent's configuration file (/etc/captain/agent.yaml).
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/captain-cd/captain/agent/localstate"
)

// DefaultPath is where `captain-agent install` writes the configuration.
const DefaultPath = "/etc/captain/agent.yaml"

// Config is the agent configuration file. Field names are part of the file format.
type Config struct {
	// Coordinators are the API URLs of the coordinator nodes; the agent fails over between them.
	Coordinators []string `json:"coordinators"`
	// JoinTokenFile holds a token with role agent, used to register (and re-register).
	JoinTokenFile string `json:"join_token_file"`
	// Labels select the environments this host belongs to.
	Labels map[string]string `json:"labels,omitempty"`
	// StateDir holds local state, the host identity and the artifact cache.
	StateDir string `json:"state_dir,omitempty"`
	// RootDir prefixes every pipeline's deploy.app_root, so several agents can share one
	// machine (development and tests). Empty on real hosts.
	RootDir string `json:"root_dir,omitempty"`
	// TrustedKeys are public key files; an artifact is unpacked only if one of them signed it.
	TrustedKeys []string `json:"trusted_keys,omitempty"`
	// CACert is a PEM file of the CAs that sign https coordinators' certificates, when they are
	// not in the system trust store (captaind --tls-cert from a private CA).
	CACert string `json:"ca_cert,omitempty"`
	// S3 says where artifact buckets are; credentials come from minio-go's standard chain.
	S3 S3 `json:"s3,omitzero"`
	// Hostname is reported to the coordinators (default: the kernel's hostname).
	Hostname string `json:"hostname,omitempty"`
	// LogLevel is debug, info, warn or error (default info).
	LogLevel string `json:"log_level,omitempty"`
}

// S3 is the artifact store endpoint.
type S3 struct {
	// Endpoint is an http(s) URL or host[:port]; empty means AWS S3 in Region.
	Endpoint string `json:"endpoint,omitempty"`
	Region   string `json:"region,omitempty"`
}

// Label rules are the coordinator's: it refuses a registration with other labels.
var (
	labelKeyRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$`)
	labelValueRE = regexp.MustCompile(`^[A-Za-z0-9._-]{0,63}$`)
)

// Load reads path, fills defaults and validates; errors name the field at fault.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read agent config: %w; write one with `captain-agent install` or pass --config", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("agent config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML strictly (unknown or repeated fields are errors), fills defaults and
// validates.
func Parse(b []byte) (*Config, error) {
	var c Config
	// Unknown fields are found first, with their full path (s3.bucket): encoding/json names
	// only the last part.
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	var raw any
	if err := json.Unmarshal(j, &raw); err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	if m, ok := raw.(map[string]any); ok {
		if unknown := unknownFields(reflect.TypeFor[Config](), m, ""); len(unknown) > 0 {
			return nil, fmt.Errorf("unknown field %s: check the spelling against ops/examples/agent.yaml", strings.Join(unknown, ", "))
		}
	} else if raw != nil {
		return nil, errors.New("the config must be a YAML mapping of fields (coordinators:, join_token_file:, ...)")
	}
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return nil, fmt.Errorf("%s", strings.TrimPrefix(strings.TrimPrefix(err.Error(), "error unmarshaling JSON: "), "while decoding JSON: "))
	}
	if c.StateDir == "" {
		c.StateDir = localstate.DefaultDir
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("hostname: not set and the kernel's is unreadable (%w); set hostname", err)
		}
		c.Hostname = h
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// unknownFields lists the keys of m (at path prefix) that t has no field for, recursing into
// nested structs.
func unknownFields(t reflect.Type, m map[string]any, prefix string) []string {
	fields := map[string]reflect.Type{}
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		fields[name] = f.Type
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var out []string
	for _, k := range keys {
		ft, ok := fields[k]
		switch {
		case !ok:
			out = append(out, strconv.Quote(prefix+k))
		case ft.Kind() == reflect.Struct:
			if sub, ok := m[k].(map[string]any); ok {
				out = append(out, unknownFields(ft, sub, prefix+k+".")...)
			}
		}
	}
	return out
}

// Validate checks every field and reports all problems at once.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Coordinators) == 0 {
		errs = append(errs, errors.New("coordinators: at least one coordinator URL is required, e.g. http://10.0.0.1:7400"))
	}
	for i, u := range c.Coordinators {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			errs = append(errs, fmt.Errorf("coordinators[%d]: %q is not an http(s)://host:port URL", i, u))
		}
	}
	if c.JoinTokenFile == "" {
		errs = append(errs, errors.New("join_token_file: required (a file holding a token with role agent, from `captain token create --role agent`)"))
	} else if !filepath.IsAbs(c.JoinTokenFile) {
		errs = append(errs, fmt.Errorf("join_token_file: %q must be an absolute path", c.JoinTokenFile))
	}
	keys := make([]string, 0, len(c.Labels))
	for k := range c.Labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !labelKeyRE.MatchString(k) {
			errs = append(errs, fmt.Errorf("labels: key %q must be 1-63 letters, digits, '.', '_', '/', '-', starting and ending with a letter or digit", k))
		}
		if v := c.Labels[k]; !labelValueRE.MatchString(v) {
			errs = append(errs, fmt.Errorf("labels.%s: value %q must be up to 63 letters, digits, '.', '_', '-'", k, v))
		}
	}
	if !filepath.IsAbs(c.StateDir) {
		errs = append(errs, fmt.Errorf("state_dir: %q must be an absolute path", c.StateDir))
	}
	if c.RootDir != "" && (!filepath.IsAbs(c.RootDir) || filepath.Clean(c.RootDir) == "/") {
		errs = append(errs, fmt.Errorf("root_dir: %q must be an absolute path other than / (or left empty on a real host)", c.RootDir))
	}
	for i, k := range c.TrustedKeys {
		if !filepath.IsAbs(k) {
			errs = append(errs, fmt.Errorf("trusted_keys[%d]: %q must be an absolute path", i, k))
		}
	}
	if c.CACert != "" && !filepath.IsAbs(c.CACert) {
		errs = append(errs, fmt.Errorf("ca_cert: %q must be an absolute path", c.CACert))
	}
	if e := c.S3.Endpoint; e != "" && strings.Contains(e, "://") {
		if p, err := url.Parse(e); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			errs = append(errs, fmt.Errorf("s3.endpoint: %q is not http(s)://host[:port] or host[:port]", e))
		}
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level: %q: use debug, info, warn or error", c.LogLevel))
	}
	return errors.Join(errs...)
}

// Marshal renders the configuration as YAML, as install writes it.
func (c *Config) Marshal() ([]byte, error) {
	b, err := yaml.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode agent config: %w", err)
	}
	return append([]byte("# Written by `captain-agent install`; see ops/examples/agent.yaml for every field.\n"), b...), nil
}
