// Command chart-render renders a Helm chart the way `helm template` does, for machines without a helm binary:
// Go's text/template with the sprig function library and Helm's own additions (include, tpl, required, toYaml,
// fromYaml, toJson, fromJson, lookup returning nothing). It loads Chart.yaml, merges values.yaml with the -f files
// (later files win, null deletes a key), renders every file under templates/ except partials (_*.tpl) and writes
// the non-empty results as one YAML stream with "# Source:" headers.
//
// Usage: chart-render [-name RELEASE] [-namespace NS] [-f values.yaml]... [-notes FILE] CHART_DIR
//
// Built by deploy/check with Debian's Go packages (golang-go, golang-github-masterminds-sprig-dev,
// golang-gopkg-yaml.v3-dev) in GOPATH mode; no Go module downloads.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"

	sprig "github.com/Masterminds/sprig/v3"
	yaml "gopkg.in/yaml.v3"
)

var documentSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

type valueFiles []string

func (v *valueFiles) String() string     { return strings.Join(*v, ",") }
func (v *valueFiles) Set(s string) error { *v = append(*v, s); return nil }

func main() {
	var files valueFiles
	release := flag.String("name", "sana", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	notes := flag.String("notes", "", "also render templates/NOTES.txt into this file")
	flag.Var(&files, "f", "values file (repeatable; later files win)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: chart-render [-name RELEASE] [-namespace NS] [-f values.yaml]... [-notes FILE] CHART_DIR")
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *release, *namespace, files, *notes); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func run(chartDir, release, namespace string, valuePaths []string, notesPath string) error {
	chart, err := readYAMLMap(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return err
	}
	name, _ := chart["name"].(string)
	if name == "" {
		return errors.New("Chart.yaml: name is required")
	}
	values, err := readYAMLMap(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, p := range valuePaths {
		override, err := readYAMLMap(p)
		if err != nil {
			return err
		}
		values = mergeValues(values, override)
	}

	templates, files, err := loadChartFiles(chartDir, name)
	if err != nil {
		return err
	}
	root := template.New("gotpl")
	root.Option("missingkey=zero")
	root.Funcs(funcMap(root))
	names := make([]string, 0, len(templates))
	for n := range templates {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if _, err := root.New(n).Parse(templates[n]); err != nil {
			return err
		}
	}

	top := map[string]interface{}{
		"Values": values,
		"Chart":  chartMetadata(chart),
		"Release": map[string]interface{}{
			"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{"Version": "v1.29.0", "Major": "1", "Minor": "29", "GitVersion": "v1.29.0"},
			"APIVersions": apiVersions{},
			"HelmVersion": map[string]interface{}{"Version": "v3.14.0"},
		},
		"Files": files,
	}
	var out bytes.Buffer
	for _, n := range names {
		base := path.Base(n)
		if strings.HasPrefix(base, "_") || base == "NOTES.txt" {
			continue
		}
		text, err := execute(root, n, top)
		if err != nil {
			return err
		}
		// like helm template: one document per manifest, empty ones dropped
		for _, doc := range documentSeparator.Split(text, -1) {
			if strings.TrimSpace(doc) != "" {
				fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", n, strings.Trim(doc, "\n"))
			}
		}
	}
	if notesPath != "" {
		n := name + "/templates/NOTES.txt"
		if _, ok := templates[n]; ok {
			text, err := execute(root, n, top)
			if err != nil {
				return err
			}
			if err := os.WriteFile(notesPath, []byte(text), 0o644); err != nil {
				return err
			}
		}
	}
	_, err = os.Stdout.Write(out.Bytes())
	return err
}

// execute renders one named template with .Template set for it, as Helm does.
func execute(root *template.Template, name string, top map[string]interface{}) (string, error) {
	data := make(map[string]interface{}, len(top)+1)
	for k, v := range top {
		data[k] = v
	}
	data["Template"] = map[string]interface{}{"Name": name, "BasePath": path.Dir(name)}
	var buf strings.Builder
	if err := root.ExecuteTemplate(&buf, name, data); err != nil {
		return "", err
	}
	return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
}

// loadChartFiles returns the templates (keyed "<chart>/templates/...") and the other files for .Files.
func loadChartFiles(chartDir, chartName string) (map[string]string, chartFiles, error) {
	templates := map[string]string{}
	files := chartFiles{}
	err := filepath.WalkDir(chartDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(chartDir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		content, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		switch {
		case strings.HasPrefix(rel, "templates/"):
			templates[chartName+"/"+rel] = string(content)
		case rel == "Chart.yaml" || rel == "values.yaml" || rel == "values.schema.json":
		default:
			files[rel] = content
		}
		return nil
	})
	return templates, files, err
}

func chartMetadata(chart map[string]interface{}) map[string]interface{} {
	meta := map[string]interface{}{}
	for k, v := range chart {
		switch k {
		case "apiVersion":
			meta["APIVersion"] = v
		case "appVersion":
			meta["AppVersion"] = v
		case "kubeVersion":
			meta["KubeVersion"] = v
		default:
			meta[strings.ToUpper(k[:1])+k[1:]] = v
		}
	}
	return meta
}

// readYAMLMap reads a YAML mapping with Helm's value semantics: it passes through JSON, so every number is a
// float64 exactly as in `helm template`.
func readYAMLMap(p string) (map[string]interface{}, error) {
	raw, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var v map[string]interface{}
	if err := fromYAMLInto(string(raw), &v); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if v == nil {
		v = map[string]interface{}{}
	}
	return v, nil
}

func fromYAMLInto(text string, out interface{}) error {
	var generic interface{}
	if err := yaml.Unmarshal([]byte(text), &generic); err != nil {
		return err
	}
	asJSON, err := json.Marshal(generic)
	if err != nil {
		return err
	}
	return json.Unmarshal(asJSON, out)
}

// mergeValues deep-merges override into base: maps merge key by key, anything else replaces, null deletes.
func mergeValues(base, override map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(base))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range override {
		if v == nil {
			delete(out, k)
			continue
		}
		baseMap, baseIsMap := out[k].(map[string]interface{})
		overrideMap, overrideIsMap := v.(map[string]interface{})
		if baseIsMap && overrideIsMap {
			out[k] = mergeValues(baseMap, overrideMap)
		} else {
			out[k] = v
		}
	}
	return out
}

// toYAML marshals through JSON first, as Helm's toYaml does, so keys come out sorted and numbers as in JSON.
func toYAML(v interface{}) (string, error) {
	asJSON, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	var generic interface{}
	if err := yaml.Unmarshal(asJSON, &generic); err != nil {
		return "", err
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(generic); err != nil {
		return "", err
	}
	return strings.TrimSuffix(buf.String(), "\n"), nil
}

func funcMap(root *template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env") // Helm removes these: a chart must not read the renderer's environment
	delete(f, "expandenv")
	includeDepth := 0
	f["include"] = func(name string, data interface{}) (string, error) {
		if includeDepth > 1000 {
			return "", fmt.Errorf("include %q: rendering too deep (recursive include?)", name)
		}
		includeDepth++
		defer func() { includeDepth-- }()
		var buf strings.Builder
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		clone, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err := clone.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf strings.Builder
		if err := t.Execute(&buf, data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	f["required"] = func(message string, v interface{}) (interface{}, error) {
		if v == nil {
			return v, errors.New(message)
		}
		if s, ok := v.(string); ok && s == "" {
			return v, errors.New(message)
		}
		return v, nil
	}
	f["toYaml"] = func(v interface{}) string {
		s, err := toYAML(v)
		if err != nil {
			return "" // Helm's toYaml swallows errors the same way
		}
		return s
	}
	f["mustToYaml"] = toYAML
	f["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := fromYAMLInto(s, &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["fromYamlArray"] = func(s string) []interface{} {
		var a []interface{}
		if err := fromYAMLInto(s, &a); err != nil {
			return []interface{}{err.Error()}
		}
		return a
	}
	f["toJson"] = func(v interface{}) string {
		b, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(b)
	}
	f["mustToJson"] = func(v interface{}) (string, error) {
		b, err := json.Marshal(v)
		return string(b), err
	}
	f["fromJson"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["fromJsonArray"] = func(s string) []interface{} {
		var a []interface{}
		if err := json.Unmarshal([]byte(s), &a); err != nil {
			return []interface{}{err.Error()}
		}
		return a
	}
	// no cluster to ask: `helm template` also returns an empty object
	f["lookup"] = func(apiVersion, kind, namespace, name string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	return f
}

// apiVersions answers .Capabilities.APIVersions.Has for the API groups the chart may use.
type apiVersions struct{}

var knownAPIVersions = map[string]bool{
	"v1": true, "apps/v1": true, "policy/v1": true, "networking.k8s.io/v1": true, "autoscaling/v2": true,
	"batch/v1": true, "monitoring.coreos.com/v1": true, "keda.sh/v1alpha1": true,
}

// Has accepts "group/version" and "group/version/Kind".
func (apiVersions) Has(version string) bool {
	return knownAPIVersions[version] || knownAPIVersions[path.Dir(version)]
}

// chartFiles is .Files: the chart's non-template files.
type chartFiles map[string][]byte

func (f chartFiles) Get(name string) string      { return string(f[name]) }
func (f chartFiles) GetBytes(name string) []byte { return f[name] }

func (f chartFiles) Glob(pattern string) chartFiles {
	out := chartFiles{}
	for name, content := range f {
		if ok, _ := path.Match(pattern, name); ok {
			out[name] = content
		}
	}
	return out
}

func (f chartFiles) Lines(name string) []string {
	s := strings.TrimRight(string(f[name]), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// AsConfig renders the files as a ConfigMap `data` block keyed by base name.
func (f chartFiles) AsConfig() string {
	m := map[string]string{}
	for name, content := range f {
		m[path.Base(name)] = string(content)
	}
	s, _ := toYAML(m)
	return s
}
