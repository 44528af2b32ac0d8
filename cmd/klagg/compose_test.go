package main

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/json"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"

	"github.com/klagg/klagg/processor"
	"github.com/klagg/klagg/schema"
)

// repoRoot is where compose.yaml, the Dockerfile and deploy/ live.
const repoRoot = "../.."

// loadCompose loads compose.yaml with the Compose specification's own
// loader, which also validates it against the specification's schema.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "compose.yaml")},
		cli.WithWorkingDirectory(root), cli.WithEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	p, err := cli.ProjectFromOptions(t.Context(), opts)
	if err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, err := p.GetService(name)
	if err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return s
}

func env(s types.ServiceConfig, key string) string {
	if v := s.Environment[key]; v != nil {
		return *v
	}
	return ""
}

// listeners maps a Kafka listener list ("NAME://host:port,...") by name.
func listeners(s string) map[string]string {
	out := map[string]string{}
	for _, l := range strings.Split(s, ",") {
		if name, addr, ok := strings.Cut(l, "://"); ok {
			out[name] = addr
		}
	}
	return out
}

// flagNames lists the flags of a klagg command, as its -h prints them.
func flagNames(t *testing.T, command string) map[string]bool {
	t.Helper()
	var stdout bytes.Buffer
	if code := run(t.Context(), []string{command, "-h"}, &stdout, io.Discard); code != 0 {
		t.Fatalf("%s -h: exit %d", command, code)
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(stdout.String(), -1) {
		names[m[1]] = true
	}
	if len(names) < 5 {
		t.Fatalf("%s -h lists %d flags: %s", command, len(names), stdout.String())
	}
	return names
}

// checkKlaggEnv fails on a KLAGG_ variable that names no flag of command:
// klagg would ignore it silently.
func checkKlaggEnv(t *testing.T, s types.ServiceConfig, command string) {
	t.Helper()
	names := flagNames(t, command)
	for k := range s.Environment {
		name, ok := strings.CutPrefix(k, "KLAGG_")
		if !ok || k == envSASLPassword || k == envRegistryPassword {
			continue
		}
		if flag := strings.ReplaceAll(strings.ToLower(name), "_", "-"); !names[flag] {
			t.Errorf("service %s: %s names no flag of klagg %s", s.Name, k, command)
		}
	}
}

// sqlSettings reads "name = 'value'" settings of a CREATE statement.
func sqlSettings(sql string) map[string]string {
	out := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^\s*(\w+)\s*=\s*'?([^',\n]*)'?,?\s*;?$`).FindAllStringSubmatch(sql, -1) {
		out[m[1]] = m[2]
	}
	return out
}

// sqlColumns lists the column names of the first parenthesised column list.
func sqlColumns(t *testing.T, sql string) []string {
	t.Helper()
	open, end := strings.Index(sql, "(\n"), strings.Index(sql, "\n)")
	if open < 0 || end < open {
		t.Fatalf("no column list in:\n%s", sql)
	}
	var cols []string
	sc := bufio.NewScanner(strings.NewReader(sql[open+2 : end]))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 {
			cols = append(cols, f[0])
		}
	}
	return cols
}

func klineFields(t *testing.T) []string {
	t.Helper()
	var s struct{ Fields []struct{ Name string } }
	if err := json.Unmarshal([]byte(schema.KlineSchemaText), &s); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range s.Fields {
		names = append(names, f.Name)
	}
	return names
}

func readSQL(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "clickhouse", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestComposeWiring checks that compose.yaml's services point at each
// other: the addresses, topics and registry klagg, gen and ClickHouse use
// are the ones Kafka and the registry offer, every KLAGG_ variable is a
// real flag with a valid value, and the ClickHouse SQL reads kline.avsc's
// fields.
func TestComposeWiring(t *testing.T) {
	p := loadCompose(t)
	var names []string
	for n := range p.Services {
		names = append(names, n)
	}
	slices.Sort(names)
	if want := []string{"clickhouse", "gen", "grafana", "kafka", "klagg", "prometheus", "schema-registry", "topics"}; !slices.Equal(names, want) {
		t.Fatalf("services %v, want %v", names, want)
	}

	kafka := service(t, p, "kafka")
	adv := listeners(env(kafka, "KAFKA_ADVERTISED_LISTENERS"))
	internal := adv[env(kafka, "KAFKA_INTER_BROKER_LISTENER_NAME")]
	if internal != "kafka:9092" {
		t.Fatalf("kafka's internal listener %q, want kafka:9092", internal)
	}
	if v := env(kafka, "KAFKA_CONTROLLER_QUORUM_VOTERS"); v != "1@kafka:"+strings.TrimPrefix(listeners(env(kafka, "KAFKA_LISTENERS"))["CONTROLLER"], ":") {
		t.Errorf("controller quorum %q does not match the CONTROLLER listener", v)
	}
	external := adv["EXTERNAL"]
	published := map[string]string{} // host port -> service
	for _, s := range p.Services {
		for _, port := range s.Ports {
			if other, dup := published[port.Published]; dup {
				t.Errorf("host port %s published by %s and %s", port.Published, other, s.Name)
			}
			published[port.Published] = s.Name
		}
	}
	if _, port, _ := strings.Cut(external, ":"); published[port] != "kafka" {
		t.Errorf("kafka's external listener %s is not published (ports %v)", external, published)
	}

	klagg := service(t, p, "klagg")
	checkKlaggEnv(t, klagg, "run")
	fs, rf := newRunFlags("run", io.Discard)
	if err := parse(fs, nil, func(k string) string { return env(klagg, k) }); err != nil {
		t.Fatalf("klagg's environment: %v", err)
	}
	if err := rf.finish(func(k string) string { return env(klagg, k) }); err != nil {
		t.Fatalf("klagg's environment: %v", err)
	}
	cfg := rf.cfg
	if !slices.Equal(cfg.Brokers, []string{internal}) {
		t.Errorf("klagg's brokers %v, want [%s]", cfg.Brokers, internal)
	}
	if klagg.Deploy == nil || klagg.Deploy.Replicas == nil || *klagg.Deploy.Replicas != 2 {
		t.Error("klagg should run two replicas")
	}
	if klagg.Build == nil || filepath.Clean(klagg.Build.Context) != p.WorkingDir {
		t.Errorf("klagg is not built from the repository: %+v", klagg.Build)
	}
	if !slices.Equal([]string(klagg.Command), []string{"run"}) {
		t.Errorf("klagg's command %v", klagg.Command)
	}
	if _, port, _ := strings.Cut(rf.metricsAddr, ":"); !slices.Contains([]string(klagg.Expose), port) {
		t.Errorf("klagg's metrics port %s is not exposed (%v)", port, klagg.Expose)
	}

	reg := service(t, p, "schema-registry")
	regURL, err := url.Parse(cfg.SchemaRegistry)
	if err != nil || regURL.Hostname() != "schema-registry" {
		t.Fatalf("klagg's registry %q is not the schema-registry service", cfg.SchemaRegistry)
	}
	if l := env(reg, "SCHEMA_REGISTRY_LISTENERS"); !strings.HasSuffix(l, ":"+regURL.Port()) {
		t.Errorf("registry listens on %q, klagg calls %s", l, cfg.SchemaRegistry)
	}
	if b := env(reg, "SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"); b != "PLAINTEXT://"+internal {
		t.Errorf("registry's Kafka %q, want PLAINTEXT://%s", b, internal)
	}

	topics := service(t, p, "topics")
	cmd := strings.Join(topics.Command, " ")
	if !strings.Contains(cmd, "--bootstrap-server "+internal) || !strings.Contains(cmd, "--topic "+cfg.TradesTopic+" ") {
		t.Errorf("topics does not create %q on %s: %s", cfg.TradesTopic, internal, cmd)
	}

	gen := service(t, p, "gen")
	checkKlaggEnv(t, gen, "gen")
	genFlags := flagNames(t, "gen")
	for _, a := range gen.Command[1:] {
		if name, ok := strings.CutPrefix(a, "--"); ok && !genFlags[name] {
			t.Errorf("gen's command has an unknown flag %s", a)
		}
	}
	if gen.Command[0] != "gen" || env(gen, "KLAGG_BROKERS") != internal || env(gen, "KLAGG_TRADES_TOPIC") != cfg.TradesTopic {
		t.Errorf("gen does not produce to klagg's trades topic on %s: %v %v", internal, gen.Command, gen.Environment)
	}

	ch := service(t, p, "clickhouse")
	mounted := false
	for _, v := range ch.Volumes {
		mounted = mounted || (v.Target == "/docker-entrypoint-initdb.d" && v.Source == filepath.Join(p.WorkingDir, "deploy", "clickhouse"))
	}
	if !mounted {
		t.Errorf("clickhouse does not run deploy/clickhouse's SQL at start: %+v", ch.Volumes)
	}
	// Its Kafka engine reads committed klines only: klagg's aborted
	// transactions must not reach the table.
	configured := false
	for _, v := range ch.Volumes {
		if v.Source == filepath.Join(p.WorkingDir, "deploy", "clickhouse-config", "kafka.xml") &&
			strings.HasPrefix(v.Target, "/etc/clickhouse-server/config.d/") {
			xml, err := os.ReadFile(v.Source)
			if err != nil {
				t.Fatal(err)
			}
			configured = strings.Contains(string(xml), "<isolation_level>read_committed</isolation_level>")
		}
	}
	if !configured {
		t.Errorf("clickhouse's Kafka engine is not set to read_committed by deploy/clickhouse-config/kafka.xml: %+v", ch.Volumes)
	}
	queue := readSQL(t, "02-klines-queue.sql")
	set := sqlSettings(queue)
	for k, want := range map[string]string{
		"kafka_broker_list": internal, "kafka_topic_list": cfg.KlinesTopic, "kafka_format": "AvroConfluent",
		"format_avro_schema_registry_url": cfg.SchemaRegistry,
	} {
		if set[k] != want {
			t.Errorf("02-klines-queue.sql: %s = %q, want %q", k, set[k], want)
		}
	}
	if !strings.Contains(queue, "klagg.klines_queue AS klagg.klines\n") {
		t.Error("02-klines-queue.sql: the Kafka table does not take klagg.klines's columns")
	}
	fields := klineFields(t)
	target := readSQL(t, "01-klines.sql")
	if cols := sqlColumns(t, target); !slices.Equal(cols, fields) {
		t.Errorf("klines columns %v, kline.avsc fields %v", cols, fields)
	}
	for _, want := range []string{"ENGINE = ReplacingMergeTree(version)", "ORDER BY (symbol, period, open_time)"} {
		if !strings.Contains(target, want) {
			t.Errorf("01-klines.sql lacks %q", want)
		}
	}
	mv := readSQL(t, "03-klines-mv.sql")
	for _, f := range fields {
		if !regexp.MustCompile(`\b` + f + `\b`).MatchString(mv) {
			t.Errorf("03-klines-mv.sql does not select %s", f)
		}
	}
}

// TestDockerfile: the image is multi-stage, runs as a non-root user, and
// its build command, run here on this tree, makes a static binary.
func TestDockerfile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	b, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var froms, users []string
	var build string
	for _, line := range strings.Split(string(b), "\n") {
		switch f := strings.Fields(line); {
		case len(f) == 0:
		case f[0] == "FROM":
			froms = append(froms, line)
		case f[0] == "USER":
			users = append(users, f[1])
		case f[0] == "RUN" && strings.Contains(line, "go build"):
			build = strings.TrimPrefix(line, "RUN ")
		}
	}
	if len(froms) < 2 {
		t.Errorf("not multi-stage: %v", froms)
	}
	if len(users) == 0 || strings.HasPrefix(users[len(users)-1], "0") || strings.HasPrefix(users[len(users)-1], "root") {
		t.Errorf("the runtime image runs as root: USER %v", users)
	}
	if build == "" {
		t.Fatal("no go build step")
	}
	out := filepath.Join(t.TempDir(), "klagg")
	build = strings.ReplaceAll(build, "/out/klagg", out)
	cmd := exec.CommandContext(t.Context(), "sh", "-c", build)
	cmd.Dir = repoRoot
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", build, err, msg)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Fatal("the binary needs a dynamic loader: not static")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Fatalf("the binary links %v", libs)
	}
}

// mountOf is the host path compose.yaml mounts at target in s.
func mountOf(t *testing.T, s types.ServiceConfig, target string) string {
	t.Helper()
	for _, v := range s.Volumes {
		if v.Target == target {
			return v.Source
		}
	}
	t.Fatalf("service %s mounts nothing at %s: %+v", s.Name, target, s.Volumes)
	return ""
}

// decodeYAML decodes a file strictly: a misspelt key fails.
func decodeYAML(t *testing.T, file string, v any) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// servedSeries gathers the series a klagg run member's /metrics offers:
// each family's labels and their values.
func servedSeries(t *testing.T) map[string]map[string]map[string]bool {
	t.Helper()
	m := newMetrics(&processor.Stats{})
	m.Lag(0, 1) // a vector appears once it has a child
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]map[string]bool{}
	for _, f := range fams {
		labels := map[string]map[string]bool{"instance": nil, "job": nil} // added by the scrape
		if f.GetType() == dto.MetricType_HISTOGRAM {
			labels["le"] = nil
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				out[f.GetName()+suffix] = labels
			}
		}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if labels[l.GetName()] == nil {
					labels[l.GetName()] = map[string]bool{}
				}
				labels[l.GetName()][l.GetValue()] = true
			}
		}
		out[f.GetName()] = labels
	}
	return out
}

// TestComposeObservability: Prometheus scrapes every klagg replica on its
// metrics port, Grafana reads that Prometheus and provisions the klagg
// dashboard, and every query of the dashboard names series and labels
// klagg serves; the dashboard shows throughput, lag, flush duration,
// refusals by reason and rebalances.
func TestComposeObservability(t *testing.T) {
	p := loadCompose(t)
	klagg := service(t, p, "klagg")
	fs, rf := newRunFlags("run", io.Discard)
	if err := parse(fs, nil, func(k string) string { return env(klagg, k) }); err != nil {
		t.Fatal(err)
	}
	_, metricsPort, _ := strings.Cut(rf.metricsAddr, ":")

	prom := service(t, p, "prometheus")
	var pc struct {
		Global struct {
			ScrapeInterval     string `yaml:"scrape_interval"`
			EvaluationInterval string `yaml:"evaluation_interval"`
		}
		ScrapeConfigs []struct {
			JobName     string `yaml:"job_name"`
			MetricsPath string `yaml:"metrics_path"`
			DNSSD       []struct {
				Names           []string
				Type            string
				Port            int
				RefreshInterval string `yaml:"refresh_interval"`
			} `yaml:"dns_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	decodeYAML(t, mountOf(t, prom, "/etc/prometheus/prometheus.yml"), &pc)
	scraped := false
	for _, sc := range pc.ScrapeConfigs {
		for _, sd := range sc.DNSSD {
			// Compose's DNS answers a service name with every replica.
			if slices.Contains(sd.Names, klagg.Name) && sd.Type == "A" && strconv.Itoa(sd.Port) == metricsPort &&
				(sc.MetricsPath == "" || sc.MetricsPath == "/metrics") {
				scraped = true
			}
		}
	}
	if !scraped {
		t.Errorf("prometheus does not scrape every %s replica on port %s: %+v", klagg.Name, metricsPort, pc)
	}

	graf := service(t, p, "grafana")
	prov := mountOf(t, graf, "/etc/grafana/provisioning")
	var dsf struct {
		APIVersion  int `yaml:"apiVersion"`
		Datasources []struct {
			Name, UID, Type, Access, URL string
			IsDefault                    bool `yaml:"isDefault"`
			Editable                     bool
		}
	}
	decodeYAML(t, filepath.Join(prov, "datasources", "prometheus.yaml"), &dsf)
	if len(dsf.Datasources) != 1 || dsf.Datasources[0].Type != "prometheus" {
		t.Fatalf("grafana's datasources: %+v", dsf)
	}
	ds := dsf.Datasources[0]
	if u, err := url.Parse(ds.URL); err != nil || u.Hostname() != prom.Name || u.Port() != "9090" {
		t.Errorf("grafana's datasource %q is not the prometheus service on its port 9090", ds.URL)
	}
	var dbf struct {
		APIVersion int `yaml:"apiVersion"`
		Providers  []struct {
			Name, Folder, Type string
			DisableDeletion    bool `yaml:"disableDeletion"`
			AllowUIUpdates     bool `yaml:"allowUiUpdates"`
			Options            struct{ Path string }
		}
	}
	decodeYAML(t, filepath.Join(prov, "dashboards", "klagg.yaml"), &dbf)
	if len(dbf.Providers) != 1 || dbf.Providers[0].Type != "file" {
		t.Fatalf("grafana's dashboard providers: %+v", dbf)
	}
	dashDir := mountOf(t, graf, dbf.Providers[0].Options.Path)
	home := env(graf, "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
	if rel, ok := strings.CutPrefix(home, dbf.Providers[0].Options.Path+"/"); !ok {
		t.Errorf("grafana's home dashboard %q is not among the provisioned ones", home)
	} else if _, err := os.Stat(filepath.Join(dashDir, rel)); err != nil {
		t.Errorf("grafana's home dashboard: %v", err)
	}

	b, err := os.ReadFile(filepath.Join(dashDir, "klagg.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string
		Title  string
		Panels []struct {
			ID         int
			Title      string
			Datasource struct{ Type, UID string }
			GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
			Targets    []struct {
				Expr       string
				Datasource struct{ UID string }
			}
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("klagg.json: %v", err)
	}
	series := servedSeries(t)
	metricRe := regexp.MustCompile(`\bklagg_[a-z0-9_]+`)
	byRe := regexp.MustCompile(`\bby\s*\(([^)]*)\)`)
	matcherRe := regexp.MustCompile(`(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	used := map[string]bool{}
	cells := map[[2]int]string{} // 24 columns × rows: no two panels overlap
	for _, panel := range dash.Panels {
		if panel.Datasource.UID != ds.UID {
			t.Errorf("panel %q: datasource %q, want the provisioned %q", panel.Title, panel.Datasource.UID, ds.UID)
		}
		if panel.GridPos.W < 1 || panel.GridPos.X+panel.GridPos.W > 24 || panel.GridPos.H < 1 {
			t.Errorf("panel %q: grid position %+v", panel.Title, panel.GridPos)
		}
		for x := panel.GridPos.X; x < panel.GridPos.X+panel.GridPos.W; x++ {
			for y := panel.GridPos.Y; y < panel.GridPos.Y+panel.GridPos.H; y++ {
				if other, ok := cells[[2]int{x, y}]; ok {
					t.Fatalf("panels %q and %q overlap", other, panel.Title)
				}
				cells[[2]int{x, y}] = panel.Title
			}
		}
		if len(panel.Targets) == 0 {
			t.Errorf("panel %q has no query", panel.Title)
		}
		for _, q := range panel.Targets {
			names := metricRe.FindAllString(q.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: %q reads no klagg series", panel.Title, q.Expr)
			}
			for _, name := range names {
				labels, ok := series[name]
				if !ok {
					t.Errorf("panel %q: klagg serves no %s", panel.Title, name)
					continue
				}
				used[name] = true
				for _, m := range byRe.FindAllStringSubmatch(q.Expr, -1) {
					for _, l := range strings.Split(m[1], ",") {
						if _, ok := labels[strings.TrimSpace(l)]; !ok {
							t.Errorf("panel %q: %s has no label %q to group by", panel.Title, name, strings.TrimSpace(l))
						}
					}
				}
				for _, m := range matcherRe.FindAllStringSubmatch(q.Expr, -1) {
					values, ok := labels[m[1]]
					if !ok {
						t.Errorf("panel %q: %s has no label %q", panel.Title, name, m[1])
						continue
					}
					if m[2] == "=" || m[2] == "=~" {
						for _, v := range strings.Split(m[3], "|") {
							if !values[v] {
								t.Errorf("panel %q: %s{%s} is never %q", panel.Title, name, m[1], v)
							}
						}
					}
				}
			}
		}
	}
	for _, want := range []string{"klagg_trades_total", "klagg_consumer_lag_records", "klagg_flush_duration_seconds_bucket",
		"klagg_trades_invalid_total", "klagg_rebalances_total"} {
		if !used[want] {
			t.Errorf("the dashboard does not show %s", want)
		}
	}
}
