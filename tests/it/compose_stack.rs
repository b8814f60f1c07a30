//! The compose stack as files (Docker cannot run here): `docker-compose.yml` parses and every
//! service, image, port, volume, dependency and variable it names is real; Prometheus scrapes
//! the services that expose `/metrics`; the Grafana dashboard and alert rules parse and use only
//! metrics trainyard exports.
use std::collections::BTreeSet;
use std::path::Path;

use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every metric name an expression uses (identifiers followed by `{`, `[`, `)` or space that
/// start with a known prefix), with histogram suffixes folded into their family.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("trainyard_") || w.starts_with("http_server_"))
        .map(|w| {
            w.trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum")
                .to_string()
        })
        .collect()
}

/// Every PromQL expression of the dashboard and the alert rules, with where it is.
pub fn all_expressions() -> Vec<(String, String)> {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("config/grafana/dashboards/trainyard.json"))
            .unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("panel `{}`", panel["title"].as_str().unwrap()),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    let alerts = yaml("config/grafana/provisioning/alerting/alerts.yml");
    for group in alerts["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            for d in rule["data"].as_sequence().unwrap() {
                if let Some(expr) = d["model"]["expr"].as_str() {
                    out.push((
                        format!("alert `{}`", rule["title"].as_str().unwrap()),
                        expr.to_string(),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn compose_file_names_only_real_things() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    for wanted in [
        "postgres",
        "migrate",
        "api",
        "worker",
        "gpu-worker",
        "otel-collector",
        "prometheus",
        "tempo",
        "grafana",
    ] {
        assert!(names.contains(wanted), "service {wanted} missing");
    }
    let volumes: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let built_images: BTreeSet<String> = services
        .values()
        .filter(|s| s.get("build").is_some())
        .filter_map(|s| s["image"].as_str().map(String::from))
        .collect();
    let text = std::fs::read_to_string(Path::new(ROOT).join("docker-compose.yml")).unwrap();
    for (name, s) in services {
        let name = name.as_str().unwrap();
        // An image from a registry (name:tag) or built here (`build: .` with the Dockerfile).
        match (s.get("image").and_then(Value::as_str), s.get("build")) {
            (_, Some(b)) => {
                let ctx = b.as_str().unwrap_or(".");
                assert!(
                    Path::new(ROOT).join(ctx).join("Dockerfile").exists(),
                    "{name}: no Dockerfile"
                );
            }
            (Some(image), None) => assert!(
                image.contains(':') || built_images.contains(image),
                "{name}: image `{image}` has no tag and is not built here"
            ),
            (None, None) => panic!("{name}: neither image nor build"),
        }
        for dep in s["depends_on"]
            .as_sequence()
            .map(|d| {
                d.iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .or_else(|| {
                s["depends_on"]
                    .as_mapping()
                    .map(|m| m.keys().map(|k| k.as_str().unwrap().to_string()).collect())
            })
            .unwrap_or_default()
        {
            assert!(
                names.contains(&dep),
                "{name} depends on unknown service {dep}"
            );
        }
        for port in s["ports"].as_sequence().into_iter().flatten() {
            let p = port.as_str().unwrap();
            let (host, container) = p.split_once(':').expect("HOST:CONTAINER");
            assert!(
                host.parse::<u16>().is_ok() && container.parse::<u16>().is_ok(),
                "{name}: port {p}"
            );
        }
        for v in s["volumes"].as_sequence().into_iter().flatten() {
            let v = v.as_str().unwrap();
            let source = v.split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(
                    Path::new(ROOT).join(source).exists(),
                    "{name}: {source} does not exist"
                );
            } else {
                assert!(
                    volumes.contains(source),
                    "{name}: named volume {source} not declared"
                );
            }
        }
    }
    // Every ${VAR} has a default (`${VAR:-x}`), so `docker compose up` needs no .env file.
    let mut rest = text.as_str();
    while let Some(i) = rest.find("${") {
        let end = rest[i..].find('}').unwrap();
        let var = &rest[i + 2..i + end];
        assert!(var.contains(":-"), "${{{var}}} has no default");
        rest = &rest[i + end..];
    }
    // The GPU worker reserves a GPU and takes the train and score queues; CPU workers scale.
    let gpu = &services[&Value::from("gpu-worker")];
    let devices = &gpu["deploy"]["resources"]["reservations"]["devices"][0];
    assert_eq!(devices["capabilities"][0], "gpu");
    let command: Vec<&str> = gpu["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let q = command.iter().position(|c| *c == "--queues").unwrap();
    assert_eq!(command[q + 1], "train,score");
    // Every job kind's queue is consumed by some worker of the stack.
    let mut consumed = std::collections::BTreeSet::new();
    for name in ["worker", "gpu-worker"] {
        let command = services[&Value::from(name)]["command"]
            .as_sequence()
            .unwrap();
        let q = command
            .iter()
            .position(|c| c.as_str() == Some("--queues"))
            .unwrap();
        consumed.extend(
            command[q + 1]
                .as_str()
                .unwrap()
                .split(',')
                .map(str::to_string),
        );
    }
    for kind in trainyard_jobs::JobKind::ALL {
        assert!(
            consumed.contains(kind.queue()),
            "no worker of docker-compose.yml takes the {} queue",
            kind.queue()
        );
    }
    assert!(
        services[&Value::from("worker")]["deploy"]["replicas"]
            .as_u64()
            .unwrap()
            >= 1
    );
    // trainyard's own flags and variables exist.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args(["worker", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["--queues", "--concurrency", "--metrics-listen"] {
        assert!(help.contains(flag), "trainyard worker has no {flag}");
    }
    for var in [
        "TRAINYARD_LOG_FORMAT",
        "TRAINYARD_SERVER__LISTEN",
        "TRAINYARD_LOCAL_MODEL__DEVICE",
    ] {
        assert!(text.contains(var));
    }
    let config = std::fs::read_to_string(Path::new(ROOT).join("config/trainyard.toml")).unwrap();
    assert!(config.contains("[local_model]") && config.contains("device ="));
    // The collector's and Tempo's configs parse; Prometheus scrapes the API and the workers on
    // the ports compose gives them.
    yaml("config/otel-collector.yaml");
    yaml("config/tempo.yaml");
    let prom = yaml("config/prometheus/prometheus.yml");
    let scrape = serde_yaml::to_string(&prom["scrape_configs"]).unwrap();
    assert!(scrape.contains("api:8322"));
    assert!(scrape.contains("worker") && scrape.contains("9464"));
    for v in [&services[&Value::from("worker")], gpu] {
        let cmd = serde_yaml::to_string(&v["command"]).unwrap();
        assert!(cmd.contains("0.0.0.0:9464"));
    }
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let exprs = all_expressions();
    assert!(exprs.len() >= 20, "{} expressions", exprs.len());
    // What the code exports, from the code: each instrument recorded once through the
    // exporter behind `/metrics`.
    let exported = trainyard::telemetry::instruments::exported_families();
    assert!(exported.len() >= 20, "{exported:?}");
    let known: BTreeSet<&str> = exported.iter().map(String::as_str).collect();
    for (place, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place}: no metric in `{expr}`");
        for n in names {
            assert!(known.contains(n.as_str()), "{place}: unknown metric {n}");
        }
    }
    let ds = yaml("config/grafana/provisioning/datasources/datasources.yml");
    let uids: Vec<&str> = ds["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|d| d["uid"].as_str().unwrap())
        .collect();
    assert!(uids.contains(&"prometheus") && uids.contains(&"tempo"));
    yaml("config/grafana/provisioning/dashboards/dashboards.yml");
}
