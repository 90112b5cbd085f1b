//! A real Prometheus server (Debian's package) for the lab: started inside
//! a namespace with the shipped alert rules, scraping the agent every
//! second, asked for its alerts over its HTTP API.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::Netns;

/// Its address inside the namespace.
pub const ADDR: &str = "127.0.0.1:9090";

/// Whether the `prometheus` server is installed.
pub fn installed() -> bool {
    Command::new("prometheus").arg("--version").output().is_ok()
}

/// GET `path` from `addr`, inside `ns`; the body.
pub fn http_get(ns: &Netns, addr: &str, path: &str) -> Option<(u16, String)> {
    let (addr, path) = (addr.to_string(), path.to_string());
    ns.run(move || {
        let mut s = TcpStream::connect(&addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    })
}

pub struct Prometheus {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- prometheus log ---\n{}",
                std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
            );
        }
    }
}

/// Starts Prometheus inside `ns` on 127.0.0.1:9090, scraping `target`
/// every second with the shipped alert rules.
pub fn start(ns: &Netns, dir: &Path, target: &str) -> Prometheus {
    let rules = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/alerts.yml"))
        .canonicalize()
        .expect("the shipped rules");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: failover-agent\n    static_configs:\n      - targets: ['{target}']\n",
        rules.display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).expect("writing prometheus.yml");
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "prometheus"])
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .args(["--web.listen-address=127.0.0.1:9090", "--log.level=warn"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log"))
        .spawn()
        .expect("starting prometheus (Debian package prometheus)");
    Prometheus { child, dir: dir.to_path_buf() }
}

/// The alerts Prometheus reports: (name, state, labels).
pub fn alerts(ns: &Netns) -> Vec<(String, String, serde_json::Value)> {
    let Some((200, body)) = http_get(ns, "127.0.0.1:9090", "/api/v1/alerts") else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["alerts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        x["labels"]["alertname"].as_str().unwrap_or_default().to_string(),
                        x["state"].as_str().unwrap_or_default().to_string(),
                        x["labels"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until Prometheus has scraped the agent successfully.
pub fn wait_scraping(ns: &Netns, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        let up = http_get(ns, ADDR, "/api/v1/query?query=up%7Bjob%3D%22failover-agent%22%7D");
        if up.is_some_and(|(c, b)| c == 200 && b.contains("\"value\":[") && b.contains(",\"1\"]")) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// The names of the alerts firing now, with their `uplink` label.
pub fn firing(ns: &Netns) -> Vec<(String, String)> {
    alerts(ns)
        .into_iter()
        .filter(|(_, state, _)| state == "firing")
        .map(|(name, _, labels)| (name, labels["uplink"].as_str().unwrap_or("-").to_string()))
        .collect()
}
