//! A real Prometheus (Debian's) for the tests: its own data directory, loopback only, scraping
//! Envoy's `/stats/prometheus` every second, stopped by its own PID on drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aviary_sim::free_port;

use serde_json::Value;

use super::{poll, TempDir};

/// One series of a query result: its labels and value.
pub type Series = (BTreeMap<String, String>, f64);

const PROMETHEUS: &str = "/usr/bin/prometheus";

pub struct Prometheus {
    child: Child,
    pub url: String,
    pub dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping the Envoy admin at `scrape_admin` as job `job`, evaluating
    /// `rule_files` every second, and waits until it is ready.
    pub fn start(scrape_admin: &str, job: &str, rule_files: &[PathBuf]) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: `make system-deps` installs it"
        );
        let dir = TempDir::new("prom");
        let target = scrape_admin.trim_start_matches("http://");
        let rules: Vec<String> = rule_files
            .iter()
            .map(|r| format!("'{}'", r.display()))
            .collect();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [{rules}]\n\
             scrape_configs:\n\
             - job_name: {job}\n  \
               metrics_path: /stats/prometheus\n  \
               static_configs: [{{targets: ['{target}']}}]\n",
            rules = rules.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write config");
        let port = free_port().expect("port");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let ready = poll(Duration::from_secs(20), Duration::from_millis(50), || {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited: {status}\n{}", p.log());
            }
            ureq::get(&format!("{}/-/ready", p.url))
                .timeout(Duration::from_millis(500))
                .call()
                .ok()
                .filter(|r| r.status() == 200)
        });
        assert!(ready.is_some(), "prometheus not ready in 20 s");
        p
    }

    /// An instant query: each series' labels and value, or Prometheus' error.
    pub fn query(&self, promql: &str) -> Result<Vec<Series>, String> {
        let resp = ureq::get(&format!("{}/api/v1/query", self.url))
            .query("query", promql)
            .timeout(Duration::from_secs(5))
            .call();
        let body: Value = match resp {
            Ok(r) => r.into_json().map_err(|e| e.to_string())?,
            Err(ureq::Error::Status(code, r)) => {
                return Err(format!(
                    "HTTP {code}: {}",
                    r.into_string().unwrap_or_default()
                ))
            }
            Err(e) => return Err(e.to_string()),
        };
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        let result = &body["data"]["result"];
        let series = match body["data"]["resultType"].as_str() {
            Some("vector") => result.as_array().cloned().unwrap_or_default(),
            Some("scalar") => vec![serde_json::json!({"metric": {}, "value": result})],
            other => return Err(format!("unexpected result type {other:?}")),
        };
        Ok(series
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
