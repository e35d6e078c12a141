#!/usr/bin/env node
// Drive N real `@elastic/opamp-client-node` (npm) agents against an OpAMP server.
//
// Usage:
//   node tests/interop/node_agents.mjs --endpoint http://127.0.0.1:4320/v1/opamp \
//       --agents 3 --poll-seconds 1 --label env=test --service-name interop-node
//
// Each agent is an independent client with its own instance uid (the
// library's UUIDv7). It describes itself like a collector (service.name,
// service.version, service.instance.id identifying; host.name, os.type and
// the --label pairs non-identifying) and accepts remote config: on every
// received AgentRemoteConfig it reports RemoteConfigStatus APPLIED with the
// received config_hash.
//
// stdout carries one JSON object per line:
//   {"event":"started","instance_uids":[...],"connected":K}
//   {"event":"remote_config","instance_uid":"...","hash":"<hex>"}
//   {"event":"instance_uid_changed","old":"...","new":"..."}  (server sent
//       agent_identification.new_instance_uid; the library adopts it)
//   {"event":"stopped"}
// Library log records at warn level and above (all levels with --verbose) go
// to stderr.
//
// It runs until stdin reaches EOF (unless --no-stdin) or SIGTERM/SIGINT, then
// shuts every client down and exits 0.
//
// What the library cannot do (so this script does not do it either): report
// health or effective config (it refuses those capability bits), send
// agent_disconnect on shutdown, WebSocket transport, honour an offered
// heartbeat interval.

import os from 'node:os';
import process from 'node:process';
import {subscribe} from 'node:diagnostics_channel';
import {parseArgs} from 'node:util';

import {
    createOpAMPClient,
    AgentCapabilities,
    RemoteConfigStatuses,
    DIAG_CH_SEND_SUCCESS,
} from '@elastic/opamp-client-node';

function emit(obj) {
    // process.stdout is synchronous for files and pipes on Linux.
    process.stdout.write(JSON.stringify(obj) + '\n');
}

function uuidString(bytes) {
    const h = Buffer.from(bytes).toString('hex');
    if (h.length !== 32) {
        return h;
    }
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function makeLogger(verbose, who) {
    const write = (level) => (...args) => {
        let fields = {};
        let msg = '';
        for (const a of args) {
            if (typeof a === 'string') {
                msg = a;
            } else if (a instanceof Error) {
                fields.err = String(a.stack || a);
            } else if (a && typeof a === 'object') {
                fields = {...fields, ...a};
                if (a.err instanceof Error) {
                    fields.err = String(a.err.stack || a.err);
                }
            }
        }
        let rest;
        try {
            rest = JSON.stringify(fields, (_k, v) =>
                typeof v === 'bigint' ? v.toString() : v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v
            );
        } catch {
            rest = '{}';
        }
        process.stderr.write(`${new Date().toISOString()} ${level} ${who}: ${msg} ${rest}\n`);
    };
    const noop = () => {};
    return {
        trace: verbose ? write('TRACE') : noop,
        debug: verbose ? write('DEBUG') : noop,
        info: verbose ? write('INFO') : noop,
        warn: write('WARN'),
        error: write('ERROR'),
        fatal: write('FATAL'),
    };
}

function usage(msg) {
    process.stderr.write(`node_agents.mjs: ${msg}\n`);
    process.exit(2);
}

function main() {
    let values;
    try {
        ({values} = parseArgs({
            options: {
                endpoint: {type: 'string'},
                agents: {type: 'string', default: '1'},
                'poll-seconds': {type: 'string', default: '30'},
                label: {type: 'string', multiple: true, default: []},
                'service-name': {type: 'string', default: 'interop-node-agent'},
                'service-version': {type: 'string', default: '0.1.0'},
                'connect-wait-seconds': {type: 'string', default: '10'},
                'no-stdin': {type: 'boolean', default: false},
                verbose: {type: 'boolean', default: false},
            },
            strict: true,
        }));
    } catch (err) {
        usage(err.message);
    }
    if (!values.endpoint) {
        usage('--endpoint is required');
    }
    const nAgents = Number(values.agents);
    if (!Number.isInteger(nAgents) || nAgents < 1) {
        usage('--agents must be an integer >= 1');
    }
    const pollSeconds = Number(values['poll-seconds']);
    // The library ignores (falls back to 30 s) anything under 0.1 s.
    if (!(pollSeconds >= 0.1)) {
        usage('--poll-seconds must be >= 0.1');
    }
    const connectWaitMs = Number(values['connect-wait-seconds']) * 1000;
    const labels = {};
    for (const l of values.label) {
        const i = l.indexOf('=');
        if (i <= 0) {
            usage(`label must be KEY=VALUE, got ${JSON.stringify(l)}`);
        }
        labels[l.slice(0, i)] = l.slice(i + 1);
    }

    const hostName = os.hostname();
    const osType = os.platform(); // 'linux', 'darwin', ... like the collector's os.type
    const capabilities = BigInt(
        AgentCapabilities.AgentCapabilities_AcceptsRemoteConfig |
            AgentCapabilities.AgentCapabilities_ReportsRemoteConfig
    ); // ReportsStatus | ReportsHeartbeat are always added by the library.

    const clients = [];
    const initialUids = [];
    const currentUids = []; // changes if the server sends agent_identification
    const connected = new Set(); // indexes of clients with a successful exchange
    let onConnected = () => {};
    // Successful exchanges, seen on the library's diagnostics channel (it
    // publishes after processing the reply, so with the client's current uid).
    subscribe(DIAG_CH_SEND_SUCCESS, () => {
        for (let i = 0; i < clients.length; i++) {
            const now = uuidString(clients[i].getInstanceUid());
            if (now !== currentUids[i]) {
                emit({event: 'instance_uid_changed', old: currentUids[i], new: now});
                currentUids[i] = now;
            }
        }
    });
    subscribe(DIAG_CH_SEND_SUCCESS, (m) => {
        const i = currentUids.indexOf(m.instanceUidStr);
        if (i >= 0 && !connected.has(i)) {
            connected.add(i);
            onConnected();
        }
    });
    for (let i = 0; i < nAgents; i++) {
        let client = null;
        client = createOpAMPClient({
            endpoint: values.endpoint,
            capabilities,
            heartbeatIntervalSeconds: pollSeconds,
            diagEnabled: true,
            log: makeLogger(values.verbose, `agent[${i}]`),
            onMessage: ({remoteConfig}) => {
                if (!remoteConfig) {
                    return;
                }
                const uid = uuidString(client.getInstanceUid());
                const hash = Buffer.from(remoteConfig.configHash ?? new Uint8Array()).toString('hex');
                emit({event: 'remote_config', instance_uid: uid, hash});
                try {
                    // Queues a RemoteConfigStatus message (sent ~30 ms later)
                    // only if hash or status changed.
                    client.setRemoteConfigStatus({
                        status: RemoteConfigStatuses.RemoteConfigStatuses_APPLIED,
                        lastRemoteConfigHash: remoteConfig.configHash,
                    });
                } catch (err) {
                    process.stderr.write(`agent ${uid}: setRemoteConfigStatus failed: ${err.stack || err}\n`);
                }
            },
        });
        const uid = uuidString(client.getInstanceUid());
        client.setAgentDescription({
            identifyingAttributes: {
                'service.name': values['service-name'],
                'service.version': values['service-version'],
                'service.instance.id': uid,
            },
            nonIdentifyingAttributes: {
                'host.name': hostName,
                'os.type': osType,
                ...labels,
            },
        });
        clients.push(client);
        initialUids.push(uid);
        currentUids.push(uid);
    }
    for (const c of clients) {
        c.start();
    }

    let stopping = false;
    const stop = async () => {
        if (stopping) {
            return;
        }
        stopping = true;
        const timeout = new Promise((resolve) => setTimeout(resolve, 15000, 'timeout'));
        const results = await Promise.race([
            Promise.allSettled(clients.map((c) => c.shutdown())),
            timeout,
        ]);
        if (results === 'timeout') {
            process.stderr.write('node_agents.mjs: client shutdown timed out\n');
        } else {
            for (const r of results) {
                if (r.status === 'rejected') {
                    process.stderr.write(`node_agents.mjs: shutdown error: ${r.reason}\n`);
                }
            }
        }
        emit({event: 'stopped'});
        process.exit(0);
    };

    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);

    const startedAt = Date.now();
    const announce = () => {
        emit({event: 'started', instance_uids: initialUids, connected: connected.size});
        if (!values['no-stdin']) {
            process.stdin.on('end', stop);
            process.stdin.on('close', stop);
            process.stdin.on('error', stop);
            process.stdin.resume(); // read and discard
        } else {
            // Keep the event loop alive (the library's timers are unref'd).
            setInterval(() => {}, 1 << 30);
        }
    };
    let announced = false;
    const maybeAnnounce = () => {
        if (announced || stopping) {
            return;
        }
        if (connected.size >= nAgents || Date.now() - startedAt >= connectWaitMs) {
            announced = true;
            clearTimeout(waitTimer);
            if (connected.size < nAgents) {
                process.stderr.write(
                    `node_agents.mjs: only ${connected.size}/${nAgents} agents had a successful exchange\n`
                );
            }
            announce();
        }
    };
    onConnected = maybeAnnounce;
    const waitTimer = setTimeout(maybeAnnounce, Math.max(0, connectWaitMs));
}

main();
