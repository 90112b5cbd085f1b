//! The shipped Grafana dashboard (deploy/grafana/failover-agent.json): it
//! is a Grafana dashboard by its structure, and every query in it (each
//! panel's targets, the switchover annotation, the template variables) is
//! a valid query that returns data from a real Prometheus (Debian's package)
//! scraping a real agent in the lab, after a link fault made it switch over.

use std::{
    collections::HashSet,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use failover_tests::{
    Netns,
    agent_lab::{AgentLab, LabOptions, active},
    have, privileged,
    prom::{self, http_get},
};
use serde_json::Value;

fn dashboard() -> Value {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/failover-agent.json"));
    let text = std::fs::read_to_string(path).expect("the shipped dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// A query of the dashboard: where it is, its expression, and whether Grafana
/// runs it as an instant query (tables) or over the time range.
struct Query {
    place: String,
    expr: String,
    instant: bool,
}

fn panels(d: &Value) -> &Vec<Value> {
    d["panels"].as_array().expect("panels")
}

fn queries(d: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().expect("targets") {
            out.push(Query {
                place: format!("panel {:?} target {}", p["title"].as_str().unwrap_or("?"), t["refId"]),
                expr: t["expr"].as_str().expect("a PromQL expr").to_string(),
                instant: t["instant"] == true && t["range"] != true,
            });
        }
    }
    out
}

/// The Prometheus annotations (the built-in Grafana one has no query).
fn annotations(d: &Value) -> Vec<&Value> {
    d["annotations"]["list"].as_array().expect("annotations").iter().filter(|a| a["expr"].is_string()).collect()
}

/// The query variables: name and `label_values(selector, label)` split.
fn variables(d: &Value) -> Vec<(String, String, String)> {
    d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = v["query"]["query"].as_str().expect("a variable query");
            let inner = q.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).expect("label_values(..)");
            let (selector, label) = inner.rsplit_once(',').expect("label_values(selector, label)");
            (v["name"].as_str().expect("a name").to_string(), selector.trim().to_string(), label.trim().to_string())
        })
        .collect()
}

/// `expr` with Grafana's variables replaced as Grafana would for the
/// values given (regex-escaped, for `=~`), and its interval variables for
/// a 1 s scrape interval; whatever `$` is left is an unknown variable.
fn substitute(expr: &str, values: &[(String, String)]) -> String {
    let mut out = expr.replace("$__rate_interval", "10s").replace("$__interval", "5s").replace("$__range", "5m");
    for (name, value) in values {
        let escaped = value.replace('.', "\\\\.");
        out = out.replace(&format!("${{{name}}}"), &escaped).replace(&format!("${name}"), &escaped);
    }
    assert!(!out.contains('$'), "an unknown variable left in {out:?} (from {expr:?})");
    out
}

#[test]
fn the_dashboard_is_a_grafana_dashboard() {
    let dash = dashboard();
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion: {}", dash["schemaVersion"]);
    assert_eq!(dash["uid"], "failover-agent");
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    let vars: Vec<&str> =
        dash["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(vars, ["datasource", "instance", "group"]);
    let mut ids = HashSet::new();
    let mut cells = HashSet::new();
    for p in panels(&dash) {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(ids.insert(p["id"].as_u64().expect("a numeric id")), "duplicate id in {title}");
        assert!(p["type"].is_string() && p["description"].is_string(), "{title}: type and description");
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}: the datasource variable");
        // On the 24-column grid, no two panels overlap.
        let grid = &p["gridPos"];
        let (x, y, w, h) = (
            grid["x"].as_u64().unwrap(),
            grid["y"].as_u64().unwrap(),
            grid["w"].as_u64().unwrap(),
            grid["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: gridPos {grid}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel at ({cx}, {cy})");
            }
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        let refs: HashSet<&str> = targets.iter().map(|t| t["refId"].as_str().unwrap()).collect();
        assert_eq!(refs.len(), targets.len(), "{title}: refIds unique");
        for target in targets {
            assert_eq!(target["datasource"], p["datasource"], "{title}");
        }
    }
    let titles: Vec<&str> = panels(&dash).iter().map(|p| p["title"].as_str().unwrap()).collect();
    for want in
        ["Active uplink", "Carrier", "Gateway reachable", "Alarms", "Switchovers", "round-trip", "Probes", "Rejected"]
    {
        assert!(titles.iter().any(|t| t.contains(want)), "no panel about {want}: {titles:?}");
    }
    let ann = annotations(&dash);
    assert_eq!(ann.len(), 1, "one annotation: switchovers");
    assert!(ann[0]["expr"].as_str().unwrap().contains("failover_switchovers_total") && ann[0]["enable"] == true);
    assert!(ann[0]["textFormat"].as_str().unwrap().contains("{{reason}}"), "the annotation says why");
    // Every query's variables are known ones.
    let values = [("instance".to_string(), "hv1:9731".to_string()), ("group".to_string(), "ext".to_string())];
    for query in queries(&dash) {
        substitute(&query.expr, &values);
    }
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// Runs `expr` on the lab's Prometheus over [start, now] (or at now): the
/// result's series.
fn query(ns: &Netns, expr: &str, instant: bool, start: f64) -> Vec<Value> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("query", expr);
    let path = if instant {
        format!("/api/v1/query?{}", form.finish())
    } else {
        form.append_pair("start", &format!("{start:.3}"));
        form.append_pair("end", &format!("{:.3}", now()));
        form.append_pair("step", "1");
        format!("/api/v1/query_range?{}", form.finish())
    };
    let (code, body) = http_get(ns, prom::ADDR, &path).expect("Prometheus answers");
    assert_eq!(code, 200, "{expr}: {body}");
    let v: Value = serde_json::from_str(&body).expect("Prometheus' JSON");
    assert_eq!(v["status"], "success", "{expr}: {body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// The sample values of a result (instant: `value`, range: `values`).
fn samples(series: &[Value]) -> Vec<String> {
    series
        .iter()
        .flat_map(|s| {
            let values = s["values"].as_array().cloned().unwrap_or_else(|| vec![s["value"].clone()]);
            values.into_iter().filter_map(|v| v[1].as_str().map(str::to_string))
        })
        .collect()
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus_scraping_the_lab() {
    let test = "every_dashboard_query_returns_data_from_a_real_prometheus_scraping_the_lab";
    if !privileged(test) || !have("prometheus", test) {
        return;
    }
    let d = dashboard();
    let mut lab = AgentLab::new(LabOptions::default());
    let _agent = lab.start_agent();
    let status = lab.wait_healthy();
    let target = status.agent.and_then(|a| a.metrics_listen).expect("metrics address in the status");
    let dir = lab.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let _prom = prom::start(&lab.host, &dir, &target);
    assert!(prom::wait_scraping(&lab.host, Duration::from_secs(30)), "Prometheus did not scrape the agent");
    let start = now() - 1.0;
    std::thread::sleep(Duration::from_secs(5));

    // A switchover, for the annotation and the timelines to show.
    lab.set_link(1, false);
    lab.wait_for("the standby active", Duration::from_secs(10), |s| active(s) == Some("standby"));
    // Rates over 10 s windows with samples on both sides of the switch.
    std::thread::sleep(Duration::from_secs(12));

    // The variables, as Grafana resolves them (one at a time, in order).
    let mut values: Vec<(String, String)> = Vec::new();
    for (name, selector, label) in variables(&d) {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("match[]", &substitute(&selector, &values));
        let (code, body) = http_get(&lab.host, prom::ADDR, &format!("/api/v1/series?{}", form.finish())).unwrap();
        assert_eq!(code, 200, "variable {name}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let mut found: Vec<&str> =
            v["data"].as_array().unwrap().iter().filter_map(|s| s[label.as_str()].as_str()).collect();
        found.sort_unstable();
        found.dedup();
        eprintln!("variable {name}: {found:?}");
        let want = if name == "instance" { target.as_str() } else { "ext" };
        assert_eq!(found, [want], "variable {name} ({selector}, {label})");
        values.push((name, want.to_string()));
    }

    let mut failed = Vec::new();
    for q in queries(&d) {
        let expr = substitute(&q.expr, &values);
        let result = query(&lab.host, &expr, q.instant, start);
        let real = samples(&result).iter().filter(|v| v.as_str() != "NaN").count();
        eprintln!("{}: {} series, {real} samples", q.place, result.len());
        if result.is_empty() || real == 0 {
            failed.push(format!("{}: no data for {expr}", q.place));
        }
    }
    assert!(failed.is_empty(), "queries without data:\n{}", failed.join("\n"));

    // The active uplink's timeline shows the switch: primary 1 then 0.
    let active_expr = queries(&d).into_iter().find(|q| q.expr.starts_with("failover_active_uplink")).unwrap().expr;
    let primary = query(&lab.host, &substitute(&active_expr, &values), false, start)
        .into_iter()
        .find(|s| s["metric"]["uplink"] == "primary")
        .expect("the primary's series");
    let seen: Vec<String> = samples(&[primary]);
    let switched = seen.iter().position(|v| v == "1").zip(seen.iter().rposition(|v| v == "0"));
    assert!(switched.is_some_and(|(one, zero)| one < zero), "primary active, then not: {seen:?}");

    // The annotation finds the switchover with its reason.
    let ann = annotations(&d)[0]["expr"].as_str().unwrap().to_string();
    let events = query(&lab.host, &substitute(&ann, &values), false, start);
    let reasons: Vec<&str> = events.iter().filter_map(|s| s["metric"]["reason"].as_str()).collect();
    eprintln!("switchover annotations: {reasons:?}");
    assert!(
        events.iter().any(|s| s["metric"]["reason"] == "nic_fault" && s["metric"]["to"] == "standby"),
        "no annotation for the nic_fault switchover: {events:?}"
    );
}
