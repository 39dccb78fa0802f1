// Package pipelinespec reads pipeline.yaml into the proto PipelineSpec and validates it.
//
// The file is converted YAML → JSON → protojson so the API, the file and the docs share one
// schema. Before protojson sees it, the JSON tree is walked along the proto descriptor: that
// walk finds every unknown field and wrong type with its full path (protojson stops at the first
// and names no path), converts Go durations ("30m") to protojson's form ("1800s"), accepts short
// enum names ("deny") and numbers where a string is expected ("max_unavailable: 2").
package pipelinespec

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"sigs.k8s.io/yaml"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// Violation names one invalid field and what was expected.
type Violation struct {
	// Field is the path, e.g. "stages[2].environments[0].selector".
	Field string `json:"field"`
	// Description says what is wrong and what is expected.
	Description string `json:"description"`
}

func (v Violation) String() string {
	if v.Field == "" {
		return v.Description
	}
	return v.Field + ": " + v.Description
}

// Violations is every problem found in a spec.
type Violations []Violation

// ErrInvalid is wrapped by the error Violations.Err returns.
var ErrInvalid = errors.New("invalid pipeline spec")

// Err returns nil when there are no violations, else an error listing them all.
func (vs Violations) Err() error {
	if len(vs) == 0 {
		return nil
	}
	lines := make([]string, len(vs))
	for i, v := range vs {
		lines[i] = v.String()
	}
	return fmt.Errorf("%w: %s", ErrInvalid, strings.Join(lines, "; "))
}

// Proto converts the violations for the API.
func (vs Violations) Proto() []*captainv1.FieldViolation {
	out := make([]*captainv1.FieldViolation, len(vs))
	for i, v := range vs {
		out[i] = &captainv1.FieldViolation{Field: v.Field, Description: v.Description}
	}
	return out
}

func (vs *Violations) add(field, format string, args ...any) {
	*vs = append(*vs, Violation{Field: field, Description: fmt.Sprintf(format, args...)})
}

// ParseYAML reads a pipeline.yaml (JSON is valid YAML too), validates it and fills defaults.
// The error is for input that is not YAML at all; field problems come back as Violations,
// all of them, and the spec is nil when there are any.
func ParseYAML(data []byte) (*captainv1.PipelineSpec, Violations, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, nil, fmt.Errorf("not valid YAML: %w", err)
	}
	var tree any
	if err := json.Unmarshal(js, &tree); err != nil {
		return nil, nil, fmt.Errorf("not valid YAML: %w", err)
	}
	if tree == nil {
		return nil, Violations{{Description: "the file is empty; expected a pipeline spec with name, deploy and stages"}}, nil
	}
	var vs Violations
	md := (&captainv1.PipelineSpec{}).ProtoReflect().Descriptor()
	tree = normalize(tree, md, "", &vs)
	clean, err := json.Marshal(tree)
	if err != nil {
		return nil, nil, fmt.Errorf("re-encode spec: %w", err)
	}
	spec := &captainv1.PipelineSpec{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(clean, spec); err != nil {
		// The walk should have caught everything protojson rejects; if not, still say something useful.
		vs.add("", "%v", err)
		return nil, vs, nil
	}
	vs = append(vs, Validate(spec)...)
	if len(vs) > 0 {
		return nil, vs, nil
	}
	Normalize(spec)
	return spec, nil, nil
}

const durationFullName = "google.protobuf.Duration"

// normalize walks a JSON value along a message descriptor and returns a value protojson accepts.
// Problems are recorded with their path; offending entries are dropped so the walk goes on.
func normalize(v any, md protoreflect.MessageDescriptor, path string, vs *Violations) any {
	obj, ok := v.(map[string]any)
	if !ok {
		vs.add(path, "expected a mapping (%s), got %s", md.Name(), jsonKind(v))
		return map[string]any{}
	}
	out := make(map[string]any, len(obj))
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	seenOneof := map[protoreflect.FullName]string{}
	for _, k := range keys {
		fd := md.Fields().ByName(protoreflect.Name(k))
		if fd == nil {
			fd = md.Fields().ByJSONName(k)
		}
		fpath := join(path, k)
		if fd == nil {
			vs.add(fpath, "unknown field%s", suggest(k, md))
			continue
		}
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			if other, dup := seenOneof[od.FullName()]; dup {
				vs.add(fpath, "only one of %s may be set, %q is set too", oneofNames(od), other)
				continue
			}
			seenOneof[od.FullName()] = k
		}
		val := obj[k]
		if val == nil {
			continue // null means unset
		}
		switch {
		case fd.IsMap():
			m, ok := val.(map[string]any)
			if !ok {
				vs.add(fpath, "expected a mapping of %s, got %s", fd.MapValue().Kind(), jsonKind(val))
				continue
			}
			nm := make(map[string]any, len(m))
			for mk, mv := range m {
				if r, ok := scalar(mv, fd.MapValue(), join(fpath, mk), vs); ok {
					nm[mk] = r
				}
			}
			out[k] = nm
		case fd.IsList():
			list, ok := val.([]any)
			if !ok {
				vs.add(fpath, "expected a list, got %s", jsonKind(val))
				continue
			}
			nl := make([]any, 0, len(list))
			for i, item := range list {
				ipath := fmt.Sprintf("%s[%d]", fpath, i)
				if fd.Kind() == protoreflect.MessageKind && fd.Message().FullName() != durationFullName {
					nl = append(nl, normalize(item, fd.Message(), ipath, vs))
					continue
				}
				if r, ok := scalar(item, fd, ipath, vs); ok {
					nl = append(nl, r)
				}
			}
			out[k] = nl
		case fd.Kind() == protoreflect.MessageKind && fd.Message().FullName() != durationFullName:
			out[k] = normalize(val, fd.Message(), fpath, vs)
		default:
			if r, ok := scalar(val, fd, fpath, vs); ok {
				out[k] = r
			}
		}
	}
	return out
}

// scalar converts one JSON scalar for a field of the given kind.
func scalar(v any, fd protoreflect.FieldDescriptor, path string, vs *Violations) (any, bool) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		switch t := v.(type) {
		case string:
			return t, true
		case float64:
			return strconv.FormatFloat(t, 'f', -1, 64), true
		case bool:
			return strconv.FormatBool(t), true
		}
		vs.add(path, "expected a string, got %s", jsonKind(v))
	case protoreflect.BoolKind:
		if b, ok := v.(bool); ok {
			return b, true
		}
		vs.add(path, "expected true or false, got %s", jsonKind(v))
	case protoreflect.Uint32Kind, protoreflect.Uint64Kind, protoreflect.Fixed32Kind, protoreflect.Fixed64Kind:
		if n, ok := v.(float64); ok && n >= 0 && n == float64(uint64(n)) {
			if fd.Kind() == protoreflect.Uint32Kind && n > 4294967295 {
				vs.add(path, "%v is too large", n)
				return nil, false
			}
			return n, true
		}
		vs.add(path, "expected a whole number ≥ 0, got %s", jsonValue(v))
	case protoreflect.Int32Kind, protoreflect.Int64Kind, protoreflect.Sint32Kind, protoreflect.Sint64Kind:
		if n, ok := v.(float64); ok && n == float64(int64(n)) {
			return n, true
		}
		vs.add(path, "expected a whole number, got %s", jsonValue(v))
	case protoreflect.EnumKind:
		s, ok := v.(string)
		if !ok {
			vs.add(path, "expected one of %s, got %s", enumChoices(fd.Enum()), jsonValue(v))
			return nil, false
		}
		if name, ok := enumName(fd.Enum(), s); ok {
			return name, true
		}
		vs.add(path, "%q is not one of %s", s, enumChoices(fd.Enum()))
	case protoreflect.MessageKind: // google.protobuf.Duration
		s, ok := v.(string)
		if !ok {
			vs.add(path, "expected a duration like \"90s\", \"5m\" or \"1h30m\", got %s", jsonValue(v))
			return nil, false
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			vs.add(path, "%q is not a duration; expected a number with a unit, like \"90s\", \"5m\" or \"1h30m\"", s)
			return nil, false
		}
		if d < 0 {
			vs.add(path, "%q is negative; expected a duration of 0 or more", s)
			return nil, false
		}
		return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s", true
	default:
		vs.add(path, "unsupported field kind %s", fd.Kind())
	}
	return nil, false
}

// enumName accepts a full value name ("WINDOW_KIND_DENY") or its short form ("deny", any case).
func enumName(ed protoreflect.EnumDescriptor, s string) (string, bool) {
	prefix := enumPrefix(ed)
	want := strings.ToUpper(strings.ReplaceAll(s, "-", "_"))
	values := ed.Values()
	for i := 0; i < values.Len(); i++ {
		full := string(values.Get(i).Name())
		if strings.HasSuffix(full, "_UNSPECIFIED") {
			continue
		}
		if full == want || strings.TrimPrefix(full, prefix) == want {
			return full, true
		}
	}
	return "", false
}

func enumChoices(ed protoreflect.EnumDescriptor) string {
	prefix := enumPrefix(ed)
	var names []string
	values := ed.Values()
	for i := 0; i < values.Len(); i++ {
		full := string(values.Get(i).Name())
		if strings.HasSuffix(full, "_UNSPECIFIED") {
			continue
		}
		names = append(names, strings.ToLower(strings.TrimPrefix(full, prefix)))
	}
	return strings.Join(names, ", ")
}

// enumPrefix is the shared "ENUM_NAME_" prefix buf's lint rules require on every value.
func enumPrefix(ed protoreflect.EnumDescriptor) string {
	var b strings.Builder
	for i, r := range string(ed.Name()) {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String()) + "_"
}

func oneofNames(od protoreflect.OneofDescriptor) string {
	var names []string
	for i := 0; i < od.Fields().Len(); i++ {
		names = append(names, string(od.Fields().Get(i).Name()))
	}
	return strings.Join(names, ", ")
}

// suggest names the closest known field, or lists the known fields.
func suggest(k string, md protoreflect.MessageDescriptor) string {
	best, bestDist := "", 1<<30
	var names []string
	for i := 0; i < md.Fields().Len(); i++ {
		name := string(md.Fields().Get(i).Name())
		names = append(names, name)
		d := levenshtein(strings.ToLower(k), name)
		if jd := levenshtein(k, md.Fields().Get(i).JSONName()); jd < d {
			d = jd
		}
		if d < bestDist {
			best, bestDist = name, d
		}
	}
	if bestDist <= 2 || (bestDist <= 3 && len(k) > 8) {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return "; expected one of " + strings.Join(names, ", ")
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func jsonKind(v any) string {
	switch v.(type) {
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

func jsonValue(v any) string {
	switch t := v.(type) {
	case string:
		return strconv.Quote(t)
	case float64:
		return strconv.FormatFloat(t, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(t)
	}
	return jsonKind(v)
}
