//! The effective configs agents start with: a built-in collector YAML in a few variants,
//! padded or cut to the size the flags ask for.

use bytes::Bytes;

const COLLECTOR_YAML: &str = r#"receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
      http:
        endpoint: 0.0.0.0:4318
  hostmetrics:
    collection_interval: 30s
    scrapers:
      cpu: {}
      memory: {}
      filesystem: {}
processors:
  memory_limiter:
    check_interval: 1s
    limit_percentage: 80
    spike_limit_percentage: 20
  batch:
    timeout: 5s
    send_batch_size: 8192
  resourcedetection:
    detectors: [env, system]
exporters:
  otlphttp:
    endpoint: https://otlp.example.com:4318
    compression: gzip
extensions:
  health_check: {}
  opamp:
    server:
      ws:
        endpoint: ws://127.0.0.1:4320/v1/opamp
service:
  extensions: [health_check, opamp]
  pipelines:
    metrics:
      receivers: [otlp, hostmetrics]
      processors: [memory_limiter, resourcedetection, batch]
      exporters: [otlphttp]
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlphttp]
"#;

/// The effective config variant of agent `index` among `variants`: min(trailing_ones, N-1),
/// so variant k is reported by 1/2^(k+1) of the agents (the last one by the rest), spread
/// evenly over the fleet.
pub fn config_variant(index: usize, variants: usize) -> usize {
    (index.trailing_ones() as usize).min(variants.saturating_sub(1))
}

/// Effective config variant `variant` of `size` bytes (0: the natural size). Variant 0 is
/// the built-in collector YAML; the others differ in a header, the batch size and the
/// exporter endpoint, as collectors of different teams would.
pub fn config_body(size: usize, variant: usize) -> Bytes {
    let mut yaml = if variant == 0 {
        COLLECTOR_YAML.to_string()
    } else {
        format!("# fleet profile {variant}\n{COLLECTOR_YAML}")
            .replace(
                "send_batch_size: 8192",
                &format!("send_batch_size: {}", 8192 + 1024 * variant),
            )
            .replace(
                "https://otlp.example.com:4318",
                &format!("https://otlp-{variant}.example.com:4318"),
            )
    };
    if size == 0 {
        return Bytes::from(yaml);
    }
    if size <= yaml.len() {
        yaml.truncate(size);
        if let Some(cut) = yaml.rfind('\n') {
            yaml.truncate(cut + 1);
        }
        return Bytes::from(yaml);
    }
    let mut line = 0;
    while yaml.len() < size {
        let remaining = size - yaml.len();
        let pad = format!(
            "# padding line {line:06} ........................................................\n"
        );
        if pad.len() <= remaining {
            yaml.push_str(&pad);
        } else if remaining >= 2 {
            yaml.push('#');
            yaml.push_str(&".".repeat(remaining - 2));
            yaml.push('\n');
        } else {
            yaml.push('\n');
        }
        line += 1;
    }
    Bytes::from(yaml)
}
