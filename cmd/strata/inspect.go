package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/template"
	"time"

	"github.com/stratafs/strata/runtime"
)

// containerJSON is what `strata inspect CONTAINER` prints: docker's shape
// (`docker container inspect`), for the fields strata has, so that what
// reads docker's (.State.Pid, .State.Running, .Config.Env, .Mounts, a
// jq filter) reads strata's. Config.Cmd is the command as run, the
// entrypoint and command joined.
type containerJSON struct {
	ID         string         `json:"Id"`
	Created    string         `json:"Created"`
	Path       string         `json:"Path"`
	Args       []string       `json:"Args"`
	State      stateJSON      `json:"State"`
	Image      string         `json:"Image"`
	Name       string         `json:"Name"`
	Driver     string         `json:"Driver"`
	Platform   string         `json:"Platform"`
	HostConfig hostConfigJSON `json:"HostConfig"`
	Mounts     []mountJSON    `json:"Mounts"`
	Config     configJSON     `json:"Config"`
}

type stateJSON struct {
	Status     string `json:"Status"`
	Running    bool   `json:"Running"`
	Paused     bool   `json:"Paused"`
	Restarting bool   `json:"Restarting"`
	OOMKilled  bool   `json:"OOMKilled"`
	Dead       bool   `json:"Dead"`
	Pid        int    `json:"Pid"`
	ExitCode   int    `json:"ExitCode"`
	Error      string `json:"Error"`
	StartedAt  string `json:"StartedAt"`
	FinishedAt string `json:"FinishedAt"`
}

type hostConfigJSON struct {
	Binds          []string          `json:"Binds"`
	NetworkMode    string            `json:"NetworkMode"`
	AutoRemove     bool              `json:"AutoRemove"`
	Privileged     bool              `json:"Privileged"`
	ReadonlyRootfs bool              `json:"ReadonlyRootfs"`
	CapAdd         []string          `json:"CapAdd"`
	CapDrop        []string          `json:"CapDrop"`
	Tmpfs          map[string]string `json:"Tmpfs,omitempty"`
	Memory         int64             `json:"Memory"`
	NanoCpus       int64             `json:"NanoCpus"`
	PidsLimit      *int64            `json:"PidsLimit"`
	Init           *bool             `json:"Init"`
	ExtraHosts     []string          `json:"ExtraHosts"`
	ShmSize        int64             `json:"ShmSize"`
	Ulimits        []ulimitJSON      `json:"Ulimits"`
}

type ulimitJSON struct {
	Name string `json:"Name"`
	Soft int64  `json:"Soft"`
	Hard int64  `json:"Hard"`
}

type mountJSON struct {
	Type        string `json:"Type"`
	Name        string `json:"Name,omitempty"`
	Source      string `json:"Source"`
	Destination string `json:"Destination"`
	Mode        string `json:"Mode"`
	RW          bool   `json:"RW"`
	Propagation string `json:"Propagation"`
}

type configJSON struct {
	Hostname    string              `json:"Hostname"`
	User        string              `json:"User"`
	Tty         bool                `json:"Tty"`
	OpenStdin   bool                `json:"OpenStdin"`
	Env         []string            `json:"Env"`
	Cmd         []string            `json:"Cmd"`
	Image       string              `json:"Image"`
	Volumes     map[string]struct{} `json:"Volumes"`
	WorkingDir  string              `json:"WorkingDir"`
	StopSignal  string              `json:"StopSignal,omitempty"`
	StopTimeout int                 `json:"StopTimeout"`
	Labels      map[string]string   `json:"Labels"`
}

// dockerTime is a time as docker prints it: RFC 3339 with nanoseconds,
// and the zero time for never.
func dockerTime(t time.Time) string {
	return t.UTC().Format(time.RFC3339Nano)
}

func inspectJSON(c *runtime.Container, st runtime.State) containerJSON {
	s := c.Spec
	out := containerJSON{
		ID: c.ID, Created: dockerTime(c.Created), Image: c.ImageID, Name: "/" + c.Name,
		Driver: "strata", Platform: "linux", Args: []string{},
		State: stateJSON{
			Status: st.Status, Running: st.Status == runtime.StatusRunning || st.Status == runtime.StatusPaused,
			Paused: st.Status == runtime.StatusPaused, OOMKilled: st.OOMKilled, Pid: st.Pid, ExitCode: st.ExitCode,
			Error: st.Error, StartedAt: dockerTime(st.StartedAt), FinishedAt: dockerTime(st.FinishedAt),
		},
		HostConfig: hostConfigJSON{
			Binds: []string{}, NetworkMode: s.Network, AutoRemove: c.AutoRemove, Privileged: s.Privileged,
			ReadonlyRootfs: s.ReadonlyRootfs, Memory: c.Resources.Memory,
			NanoCpus: int64(c.Resources.CPUs * 1e9),
		},
		Mounts: []mountJSON{},
		Config: configJSON{
			Hostname: s.Hostname, User: s.User, Tty: s.Tty, OpenStdin: c.Interactive, Env: s.Env, Cmd: s.Args,
			Image: c.Image, Volumes: map[string]struct{}{}, WorkingDir: s.Cwd, StopSignal: c.StopSignal,
			StopTimeout: c.StopTimeout, Labels: map[string]string{},
		},
	}
	if !out.State.Running {
		out.State.Pid = 0
	}
	if len(s.Args) > 0 {
		out.Path, out.Args = s.Args[0], s.Args[1:]
	}
	for k, v := range c.Labels {
		out.Config.Labels[k] = v
	}
	out.HostConfig.ShmSize = s.ShmSize
	if out.HostConfig.ShmSize == 0 {
		out.HostConfig.ShmSize = 64 << 20
	}
	out.HostConfig.ExtraHosts = c.ExtraHosts
	for _, l := range s.Rlimits {
		// docker's -1 for unlimited.
		out.HostConfig.Ulimits = append(out.HostConfig.Ulimits, ulimitJSON{Name: l.Name, Soft: int64(l.Soft), Hard: int64(l.Hard)})
	}
	// As docker has them: what --cap-add and --cap-drop changed of its
	// default set (nothing for --privileged).
	if !s.Privileged {
		defaults := runtime.DefaultCapabilities()
		for _, c := range s.Capabilities {
			if !slices.Contains(defaults, c) {
				out.HostConfig.CapAdd = append(out.HostConfig.CapAdd, c)
			}
		}
		for _, c := range defaults {
			if !slices.Contains(s.Capabilities, c) {
				out.HostConfig.CapDrop = append(out.HostConfig.CapDrop, c)
			}
		}
	}
	if c.Resources.PidsLimit > 0 {
		out.HostConfig.PidsLimit = &c.Resources.PidsLimit
	}
	if s.Init {
		out.HostConfig.Init = &s.Init
	}
	volumeAt := map[string]runtime.VolumeRef{}
	for _, v := range c.Volumes {
		volumeAt[v.Destination] = v
		if v.Anonymous {
			out.Config.Volumes[v.Destination] = struct{}{}
		}
	}
	for _, m := range s.Mounts {
		mode := ""
		if m.ReadOnly {
			mode = "ro"
		}
		switch v, isVolume := volumeAt[m.Destination]; {
		case m.Type == "tmpfs":
			if out.HostConfig.Tmpfs == nil {
				out.HostConfig.Tmpfs = map[string]string{}
			}
			out.HostConfig.Tmpfs[m.Destination] = m.Data
			out.Mounts = append(out.Mounts, mountJSON{Type: "tmpfs", Destination: m.Destination, RW: !m.ReadOnly, Mode: mode})
		case isVolume:
			out.Mounts = append(out.Mounts, mountJSON{Type: "volume", Name: v.Name, Source: m.Source, Destination: m.Destination,
				Mode: mode, RW: !m.ReadOnly})
			if !v.Anonymous {
				out.HostConfig.Binds = append(out.HostConfig.Binds, bindSpec(v.Name, m))
			}
		default:
			out.Mounts = append(out.Mounts, mountJSON{Type: "bind", Source: m.Source, Destination: m.Destination,
				Mode: mode, RW: !m.ReadOnly, Propagation: "rprivate"})
			out.HostConfig.Binds = append(out.HostConfig.Binds, bindSpec(m.Source, m))
		}
	}
	return out
}

// bindSpec is a mount as -v gives it: SOURCE:DESTINATION[:ro].
func bindSpec(source string, m runtime.Mount) string {
	b := source + ":" + m.Destination
	if m.ReadOnly {
		b += ":ro"
	}
	return b
}

// outputTemplate parses a --format Go template, with docker's functions
// (json, join, lower, upper). It is run on an object as its JSON has it,
// so it takes docker's names ({{.State.Pid}}, {{.Id}}, {{.Names}}); a
// name the object lacks is an error, not "<no value>".
func outputTemplate(text string) (*template.Template, error) {
	t, err := template.New("format").Option("missingkey=error").Funcs(template.FuncMap{
		"json": func(v any) (string, error) {
			b, err := json.Marshal(v)
			return string(b), err
		},
		"join": func(list []any, sep string) string {
			s := make([]string, len(list))
			for i, e := range list {
				s[i] = fmt.Sprint(e)
			}
			return strings.Join(s, sep)
		},
		"lower": strings.ToLower,
		"upper": strings.ToUpper,
	}).Parse(text)
	if err != nil {
		return nil, &usageError{msg: fmt.Sprintf("invalid --format: %v", err)}
	}
	return t, nil
}

// printTemplate prints o through t, and a newline.
func printTemplate(w io.Writer, t *template.Template, o any) error {
	b, err := json.Marshal(o)
	if err != nil {
		return err
	}
	// Numbers stay as written (a float64 would print 6.7108864e+07).
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return err
	}
	var line bytes.Buffer
	if err := t.Execute(&line, v); err != nil {
		return fmt.Errorf("--format: %w", err)
	}
	_, err = fmt.Fprintln(w, line.String())
	return err
}
