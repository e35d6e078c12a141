// Command opamp-go-load runs N real opamp-go plain-HTTP clients against an OpAMP server, so that
// Corral's plain-HTTP cost can be measured with the reference Go client (the one inside the
// OpenTelemetry collector's opamp extension and supervisor) and not only with Corral's simulator.
// examples/bench_opamp_go.sh builds and runs it.
//
// Built against github.com/open-telemetry/opamp-go v0.23.0 (the newest release the Go module
// proxy serves; it needs Go 1.24), github.com/google/uuid v1.6.0, google.golang.org/protobuf
// v1.36.11.
//
// Each agent is one client.NewHTTP client as a collector creates it: its own UUIDv7 instance uid,
// a collector-like agent description, health healthy, a shared ~5 KiB YAML effective config, the
// capabilities ReportsStatus|ReportsHealth|ReportsEffectiveConfig|AcceptsRemoteConfig|
// ReportsRemoteConfig|AcceptsOpAMPConnectionSettings|ReportsHeartbeat, and its polling interval
// set by the HTTP client's SetPollingInterval (-poll). Because it reports heartbeats, a heartbeat
// interval the server offers in its OpAMP connection settings replaces that polling interval.
//
// Connections: opamp-go gives no way to pass an *http.Client, but NewHTTP clones
// http.DefaultTransport for each client (client/internal/utils.NewHttpClient). So each agent has
// its own http.Transport and keeps its own keep-alive connection (Go's defaults: idle connections
// are kept 90 s), as each collector does. To spread the agents over source addresses
// 127.0.0.1..127.0.0.N (-source-ips), http.DefaultTransport is set, just before each NewHTTP call,
// to a transport whose dialer binds that agent's address; NewHTTP copies it. Clients are only
// ever created from the one starting goroutine and nothing else in this program uses
// http.DefaultTransport.
//
// Progress (started, connected, errors, ...) goes to stderr every 10 s; on SIGTERM/SIGINT (or
// after -duration) every client is stopped and one JSON line of counts goes to stdout.
// "connected" counts agents whose last request got HTTP 200 (OnConnect) and not a retryable
// failure since (OnConnectFailed).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/open-telemetry/opamp-go/client"
	"github.com/open-telemetry/opamp-go/client/types"
	"github.com/open-telemetry/opamp-go/protobufs"
)

const capabilities = protobufs.AgentCapabilities_AgentCapabilities_ReportsStatus |
	protobufs.AgentCapabilities_AgentCapabilities_ReportsHealth |
	protobufs.AgentCapabilities_AgentCapabilities_ReportsEffectiveConfig |
	protobufs.AgentCapabilities_AgentCapabilities_AcceptsRemoteConfig |
	protobufs.AgentCapabilities_AgentCapabilities_ReportsRemoteConfig |
	protobufs.AgentCapabilities_AgentCapabilities_AcceptsOpAMPConnectionSettings |
	protobufs.AgentCapabilities_AgentCapabilities_ReportsHeartbeat

// Counters shared by all agents.
var (
	started         atomic.Int64
	connected       atomic.Int64 // agents whose last request succeeded
	okResponses     atomic.Int64 // OnConnect calls: HTTP 200 replies
	connectFailed   atomic.Int64 // OnConnectFailed calls: retryable failures (network, 429, 503)
	loggedErrors    atomic.Int64 // Errorf calls of the opamp-go client (every failure is logged)
	serverErrors    atomic.Int64 // OnError: error_response from the server
	remoteConfigs   atomic.Int64 // remote configs offered (answered with APPLIED)
	heartbeatOffers atomic.Int64 // OpAMP connection settings received
	heartbeatOffer  atomic.Int64 // the last heartbeat interval offered, seconds
	intervalSumNs   atomic.Int64 // sum of the gaps between an agent's successive 200 replies
	intervals       atomic.Int64 // how many such gaps
	quickFollowUps  atomic.Int64 // gaps under 1 s (a reply that asked for more, not a poll)
	stopErrors      atomic.Int64
)

// logger counts the opamp-go client's errors and prints the first few.
type logger struct{ printed atomic.Int64 }

func (l *logger) Debugf(context.Context, string, ...any) {}

func (l *logger) Errorf(_ context.Context, format string, v ...any) {
	loggedErrors.Add(1)
	if l.printed.Add(1) <= 20 {
		fmt.Fprintf(os.Stderr, "opamp-go error: %s\n", fmt.Sprintf(format, v...))
	}
}

// httpClient is what client.NewHTTP returns (an unexported type): the OpAMPClient interface
// and the polling-interval setter of the plain-HTTP client.
type httpClient interface {
	client.OpAMPClient
	SetPollingInterval(time.Duration)
}

type agent struct {
	client   httpClient
	up       atomic.Bool
	lastOKNs atomic.Int64
}

func (a *agent) onConnect(context.Context) {
	okResponses.Add(1)
	if !a.up.Swap(true) {
		connected.Add(1)
	}
	now := time.Now().UnixNano()
	if last := a.lastOKNs.Swap(now); last != 0 {
		gap := now - last
		intervalSumNs.Add(gap)
		intervals.Add(1)
		if gap < int64(time.Second) {
			quickFollowUps.Add(1)
		}
	}
}

func (a *agent) onConnectFailed(context.Context, error) {
	connectFailed.Add(1)
	if a.up.Swap(false) {
		connected.Add(-1)
	}
}

// collectorYAML is a collector configuration padded with comment lines to size bytes.
func collectorYAML(size int) []byte {
	var b strings.Builder
	b.WriteString(`# opamp-go-load effective configuration
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
      http:
        endpoint: 0.0.0.0:4318
processors:
  memory_limiter:
    check_interval: 1s
    limit_percentage: 80
  batch:
    timeout: 5s
exporters:
  otlphttp:
    endpoint: https://otlp.example.com:4318
extensions:
  opamp:
    server:
      http:
        endpoint: http://127.0.0.1:4320/v1/opamp
service:
  extensions: [opamp]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlphttp]
    metrics:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlphttp]
`)
	const pad = "# padding ......................................................................\n"
	for b.Len()+len(pad) <= size {
		b.WriteString(pad)
	}
	return []byte(b.String())
}

func str(key, value string) *protobufs.KeyValue {
	return &protobufs.KeyValue{Key: key, Value: &protobufs.AnyValue{
		Value: &protobufs.AnyValue_StringValue{StringValue: value}}}
}

// transports returns one template transport per source address (Go's default transport
// settings, a dialer bound to 127.0.0.(i+1)), or nil when agents should not bind.
func transports(server string, sourceIPs int) ([]*http.Transport, error) {
	u, err := url.Parse(server)
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(u.Hostname())
	if sourceIPs <= 0 || ip == nil || !ip.IsLoopback() || ip.To4() == nil {
		if sourceIPs > 0 {
			fmt.Fprintf(os.Stderr, "-source-ips ignored: %s is not an IPv4 loopback address\n", u.Hostname())
		}
		return nil, nil
	}
	base, ok := http.DefaultTransport.(*http.Transport)
	if !ok {
		return nil, fmt.Errorf("http.DefaultTransport is a %T", http.DefaultTransport)
	}
	out := make([]*http.Transport, sourceIPs)
	for i := range out {
		d := &net.Dialer{
			Timeout:   30 * time.Second,
			KeepAlive: 30 * time.Second,
			LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i))},
		}
		t := base.Clone()
		t.DialContext = d.DialContext
		out[i] = t
	}
	return out, nil
}

func main() {
	server := flag.String("server", "http://127.0.0.1:4320/v1/opamp", "OpAMP plain-HTTP endpoint")
	agents := flag.Int("agents", 3000, "number of agents")
	rate := flag.Float64("rate", 1000, "agents started per second")
	poll := flag.Duration("poll", 5*time.Second, "polling interval (a heartbeat interval the server offers replaces it)")
	duration := flag.Duration("duration", 0, "run this long, then stop (0: until SIGTERM/SIGINT)")
	sourceIPs := flag.Int("source-ips", 8, "bind agents to 127.0.0.1..127.0.0.N (0: do not bind)")
	configSize := flag.Int("config-size", 5120, "bytes of the effective config YAML (shared by all agents)")
	flag.Parse()
	if *agents < 1 || *rate <= 0 || *poll <= 0 {
		fmt.Fprintln(os.Stderr, "-agents, -rate and -poll must be positive")
		os.Exit(2)
	}

	templates, err := transports(*server, *sourceIPs)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defaultTransport := http.DefaultTransport

	// One config body for every agent; GetEffectiveConfig wraps it in a fresh message.
	configBody := collectorYAML(*configSize)
	effectiveConfig := func(context.Context) (*protobufs.EffectiveConfig, error) {
		return &protobufs.EffectiveConfig{ConfigMap: &protobufs.AgentConfigMap{
			ConfigMap: map[string]*protobufs.AgentConfigFile{
				"": {Body: configBody, ContentType: "text/yaml"},
			}}}, nil
	}
	hostname, _ := os.Hostname()
	log := &logger{}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if *duration > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeout(ctx, *duration)
		defer stop()
	}

	begin := time.Now()
	go func() {
		tick := time.NewTicker(10 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				fmt.Fprintf(os.Stderr, "%6.0fs started=%d connected=%d errors=%d connect_failed=%d ok_responses=%d\n",
					time.Since(begin).Seconds(), started.Load(), connected.Load(), loggedErrors.Load(),
					connectFailed.Load(), okResponses.Load())
			}
		}
	}()

	all := make([]*agent, 0, *agents)
	startStart := time.Now()
	step := time.Duration(float64(time.Second) / *rate)
start:
	for i := 0; i < *agents; i++ {
		if wait := time.Until(startStart.Add(time.Duration(i) * step)); wait > 0 {
			select {
			case <-ctx.Done():
				break start
			case <-time.After(wait):
			}
		} else if ctx.Err() != nil {
			break
		}
		a := &agent{}
		uid := uuid.Must(uuid.NewV7())

		if templates != nil {
			http.DefaultTransport = templates[i%len(templates)]
		}
		a.client = client.NewHTTP(log)
		http.DefaultTransport = defaultTransport
		a.client.SetPollingInterval(*poll)

		must(a.client.SetAgentDescription(&protobufs.AgentDescription{
			IdentifyingAttributes: []*protobufs.KeyValue{
				str("service.name", "otelcol-contrib"),
				str("service.version", "0.120.0"),
				str("service.instance.id", uid.String()),
			},
			NonIdentifyingAttributes: []*protobufs.KeyValue{
				str("os.type", "linux"),
				str("host.arch", "amd64"),
				str("host.name", fmt.Sprintf("%s-%05d", hostname, i)),
				str("os.description", "Debian GNU/Linux 12 (bookworm)"),
			},
		}))
		must(a.client.SetHealth(&protobufs.ComponentHealth{
			Healthy:           true,
			StartTimeUnixNano: uint64(time.Now().UnixNano()),
			Status:            "StatusOK",
		}))
		caps := capabilities
		must(a.client.SetCapabilities(&caps))

		c := a.client
		settings := types.StartSettings{
			OpAMPServerURL: *server,
			InstanceUid:    types.InstanceUid(uid),
			Callbacks: types.Callbacks{
				OnConnect:       a.onConnect,
				OnConnectFailed: a.onConnectFailed,
				OnError: func(context.Context, *protobufs.ServerErrorResponse) {
					serverErrors.Add(1)
				},
				GetEffectiveConfig: effectiveConfig,
				OnOpampConnectionSettings: func(_ context.Context, s *protobufs.OpAMPConnectionSettings) error {
					heartbeatOffers.Add(1)
					heartbeatOffer.Store(int64(s.GetHeartbeatIntervalSeconds()))
					return nil
				},
				OnMessage: func(_ context.Context, msg *types.MessageData) {
					if msg.RemoteConfig == nil {
						return
					}
					// Report it applied, as a collector would once it runs it; the effective
					// config stays the shared one.
					remoteConfigs.Add(1)
					_ = c.SetRemoteConfigStatus(&protobufs.RemoteConfigStatus{
						LastRemoteConfigHash: msg.RemoteConfig.ConfigHash,
						Status:               protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLIED,
					})
				},
			},
		}
		if err := a.client.Start(context.Background(), settings); err != nil {
			fmt.Fprintf(os.Stderr, "agent %d: start: %v\n", i, err)
			loggedErrors.Add(1)
			continue
		}
		all = append(all, a)
		started.Add(1)
	}

	<-ctx.Done()
	fmt.Fprintf(os.Stderr, "stopping %d clients\n", len(all))
	stopped := time.Now()
	var wg sync.WaitGroup
	work := make(chan *agent)
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for a := range work {
				sctx, done := context.WithTimeout(context.Background(), 10*time.Second)
				if err := a.client.Stop(sctx); err != nil {
					stopErrors.Add(1)
				}
				done()
			}
		}()
	}
	for _, a := range all {
		work <- a
	}
	close(work)
	wg.Wait()

	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	meanInterval := 0.0
	if n := intervals.Load(); n > 0 {
		meanInterval = float64(intervalSumNs.Load()) / float64(n) / 1e9
	}
	out, _ := json.Marshal(map[string]any{
		"agents":                     *agents,
		"started":                    started.Load(),
		"connected_at_stop":          connected.Load(),
		"ok_responses":               okResponses.Load(),
		"connect_failed":             connectFailed.Load(),
		"errors":                     loggedErrors.Load(),
		"server_error_responses":     serverErrors.Load(),
		"remote_configs":             remoteConfigs.Load(),
		"connection_settings_offers": heartbeatOffers.Load(),
		"heartbeat_offered_s":        heartbeatOffer.Load(),
		"poll_interval_set_s":        poll.Seconds(),
		"reply_gaps":                 intervals.Load(),
		"reply_gap_mean_s":           meanInterval,
		"reply_gaps_under_1s":        quickFollowUps.Load(),
		"stop_errors":                stopErrors.Load(),
		"stop_s":                     time.Since(stopped).Seconds(),
		"run_s":                      stopped.Sub(begin).Seconds(),
		"go_heap_sys_bytes":          mem.HeapSys,
		"go_goroutines":              runtime.NumGoroutine(),
	})
	fmt.Println(string(out))
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
