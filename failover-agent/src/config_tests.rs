use super::*;

const EXAMPLE: &str = include_str!("../../deploy/failover-agent.example.toml");

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(text, Path::new("test.toml"))
}

const MINIMAL: &str = r#"
[[group]]
name = "ext"
bridge = "br-ext"
[[group.uplink]]
name = "primary"
interface = "eth1"
gateway = "192.0.2.1"
probe_source = "192.0.2.250"
[[group.uplink]]
name = "standby"
interface = "eth2"
gateway = "192.0.2.1"
probe_source = "192.0.2.250"
"#;

/// The error text of `MINIMAL` with `from` replaced by `to`.
fn error_with(from: &str, to: &str) -> String {
    assert!(MINIMAL.contains(from), "fixture lacks {from:?}");
    let text = MINIMAL.replacen(from, to, 1);
    parse_str(&text).expect_err("must be refused").to_string()
}

#[test]
fn the_shipped_example_is_valid_and_complete() {
    let c = parse_str(EXAMPLE).expect("example parses");
    assert_eq!(c.agent.metrics_listen, "127.0.0.1:9731".parse().unwrap());
    assert_eq!(c.agent.ingress, IngressMode::Tc);
    assert_eq!(c.agent.tc_attach, TcAttach::Auto);
    let g = &c.groups[0];
    assert_eq!(g.name, "ext");
    assert_eq!(g.probe_interval, Duration::from_millis(100));
    assert_eq!((g.down_after, g.up_after), (3, 3));
    assert_eq!(g.failback, Failback::Never);
    assert_eq!(g.hold_down, Duration::from_secs(10));
    assert_eq!(g.uplinks.len(), 2);
    assert_eq!(g.uplinks[0].name, "primary");
    assert_eq!(g.uplinks[0].gateway, "192.0.2.1".parse::<IpAddr>().unwrap());
}

#[test]
fn defaults_fill_what_is_left_out() {
    let c = parse_str(MINIMAL).unwrap();
    assert_eq!(c.agent.state_dir, PathBuf::from("/var/lib/failover-agent"));
    assert_eq!(c.agent.bpf_pin_dir, PathBuf::from("/sys/fs/bpf/failover-agent"));
    assert_eq!(c.agent.control_socket, PathBuf::from("/run/failover-agent/control.sock"));
    assert_eq!(c.groups[0].flap_threshold, 4);
    assert!(c.agent.ovs_flows);
    assert_eq!(c.groups[0].uplinks[1].gateway_mac, None);
}

#[test]
fn optional_uplink_keys_parse() {
    let c = parse_str(&MINIMAL.replacen(
        "probe_source = \"192.0.2.250\"",
        "probe_source = \"192.0.2.250\"\ngateway_mac = \"02:00:5e:00:53:01\"\nvlan = 100",
        1,
    ))
    .unwrap();
    assert_eq!(c.groups[0].uplinks[0].gateway_mac, Some([2, 0, 0x5e, 0, 0x53, 1]));
    assert_eq!(c.groups[0].uplinks[0].vlan, Some(100));
}

#[test]
fn ipv6_gateways_are_accepted() {
    let text = MINIMAL.replace("192.0.2.1\"", "2001:db8::1\"").replace("192.0.2.250", "2001:db8::fa");
    let c = parse_str(&text).unwrap();
    assert!(c.groups[0].uplinks.iter().all(|u| u.gateway.is_ipv6()));
}

#[test]
fn unknown_keys_are_named() {
    let e = error_with("bridge = \"br-ext\"", "bridge = \"br-ext\"\nprobe_intervall_ms = 5");
    assert!(e.contains("probe_intervall_ms"), "{e}");
    let e = error_with("interface = \"eth1\"", "interface = \"eth1\"\nmac = \"x\"");
    assert!(e.contains("unknown field `mac`"), "{e}");
    let e = parse_str(&format!("[agent]\nstatedir = \"/x\"\n{MINIMAL}")).unwrap_err().to_string();
    assert!(e.contains("statedir"), "{e}");
}

#[test]
fn wrong_types_and_duplicate_keys_are_refused() {
    let e = error_with("bridge = \"br-ext\"", "bridge = \"br-ext\"\nprobe_interval_ms = \"fast\"");
    assert!(e.contains("probe_interval_ms") && e.contains("test.toml"), "{e}");
    let e = error_with("bridge = \"br-ext\"", "bridge = \"br-ext\"\nbridge = \"br-int\"");
    assert!(e.contains("bridge"), "{e}");
    let e = error_with("bridge = \"br-ext\"", "bridge = 7");
    assert!(e.contains("bridge"), "{e}");
}

#[test]
fn bad_addresses_name_group_uplink_and_field() {
    let e = error_with("gateway = \"192.0.2.1\"", "gateway = \"192.0.2.300\"");
    assert_eq!(
        e,
        "test.toml: group \"ext\", uplink \"primary\", gateway: \"192.0.2.300\" is not an IPv4 or IPv6 address"
    );
    let e = error_with("probe_source = \"192.0.2.250\"", "probe_source = \"2001:db8::fa\"");
    assert!(e.contains("uplink \"primary\", probe_source") && e.contains("family"), "{e}");
    let e = error_with("gateway = \"192.0.2.1\"", "gateway = \"224.0.0.1\"");
    assert!(e.contains("cannot be a unicast neighbour"), "{e}");
    let e = error_with("gateway = \"192.0.2.1\"", "gateway = \"192.0.2.250\"");
    assert!(e.contains("gateway's own address"), "{e}");
    let e = error_with("interface = \"eth1\"", "interface = \"eth1\"\ngateway_mac = \"01:00:5e:00:00:01\"");
    assert!(e.contains("gateway_mac") && e.contains("not a unicast MAC"), "{e}");
    let e = error_with("interface = \"eth1\"", "interface = \"eth1\"\ngateway_mac = \"02:00:5e:00:53\"");
    assert!(e.contains("gateway_mac"), "{e}");
    let e = error_with("interface = \"eth1\"", "interface = \"eth1\"\nvlan = 4095");
    assert!(e.contains("uplink \"primary\", vlan: 4095 is out of range"), "{e}");
    let e = parse_str(&format!("[agent]\nmetrics_listen = \"localhost\"\n{MINIMAL}")).unwrap_err().to_string();
    assert!(e.contains("agent.metrics_listen"), "{e}");
    let e = parse_str(&format!("[agent]\nstate_dir = \"var/lib\"\n{MINIMAL}")).unwrap_err().to_string();
    assert!(e.contains("agent.state_dir") && e.contains("absolute"), "{e}");
}

#[test]
fn duplicate_names_and_shared_interfaces_are_refused() {
    let e = error_with("name = \"standby\"", "name = \"primary\"");
    assert!(e.contains("group \"ext\", uplink \"primary\", name: two uplinks"), "{e}");
    let e = error_with("interface = \"eth2\"", "interface = \"eth1\"");
    assert!(e.contains("uplink \"standby\", interface: \"eth1\" is already uplink \"primary\""), "{e}");
    let two = format!("{MINIMAL}{}", MINIMAL.replace("name = \"ext\"", "name = \"int\"").replace("eth1", "eth3"));
    let e = parse_str(&two).unwrap_err().to_string();
    assert!(
        e.contains("group \"int\"") && e.contains("\"eth2\" is already uplink \"standby\" of group \"ext\""),
        "{e}"
    );
    let two = format!("{MINIMAL}{}", MINIMAL.replace("eth1", "eth3").replace("eth2", "eth4"));
    let e = parse_str(&two).unwrap_err().to_string();
    assert!(e.contains("group \"ext\", name: two groups"), "{e}");
}

#[test]
fn ranges_are_enforced() {
    for (from, to, needle) in [
        ("bridge = \"br-ext\"", "bridge = \"br-ext\"\nprobe_interval_ms = 0", "probe_interval_ms: 0 is out of range"),
        ("bridge = \"br-ext\"", "bridge = \"br-ext\"\nprobe_interval_ms = 3600000", "probe_interval_ms: 3600000"),
        ("bridge = \"br-ext\"", "bridge = \"br-ext\"\ndown_after = 0", "down_after: 0"),
        ("bridge = \"br-ext\"", "bridge = \"br-ext\"\nup_after = 1000", "up_after: 1000"),
        ("bridge = \"br-ext\"", "bridge = \"br-ext\"\nfailback = \"sometimes\"", "failback: \"sometimes\""),
        ("bridge = \"br-ext\"", "bridge = \"br-ext\"\nhold_down_ms = 99999999", "hold_down_ms"),
        ("bridge = \"br-ext\"", "bridge = \"br-ext\"\nflap_threshold = 1", "flap_threshold"),
        ("bridge = \"br-ext\"", "bridge = \"\"", "bridge: must name"),
        ("name = \"ext\"", "name = \"e x t\"", "name: must be"),
        ("interface = \"eth1\"", "interface = \"a-very-long-interface\"", "not a valid interface name"),
    ] {
        let e = error_with(from, to);
        assert!(e.contains(needle), "{to}: {e}");
    }
}

#[test]
fn group_and_uplink_counts_are_enforced() {
    let one = MINIMAL.split("[[group.uplink]]").take(2).collect::<Vec<_>>().join("[[group.uplink]]");
    let e = parse_str(&one).unwrap_err().to_string();
    assert!(e.contains("group \"ext\", uplink: 1 uplink(s) configured: a group needs at least two"), "{e}");
    let e = parse_str("").unwrap_err().to_string();
    assert!(e.contains("no [[group]] configured"), "{e}");
    let mut many = String::from("[[group]]\nname = \"big\"\nbridge = \"br\"\n");
    for i in 0..9 {
        many += &format!(
            "[[group.uplink]]\nname = \"u{i}\"\ninterface = \"eth{i}\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n"
        );
    }
    let e = parse_str(&many).unwrap_err().to_string();
    assert!(e.contains("9 uplinks configured: at most 8"), "{e}");
    let mut groups = String::new();
    for g in 0..65 {
        groups += &format!("[[group]]\nname = \"g{g}\"\nbridge = \"br\"\n");
        for u in 0..2 {
            groups += &format!(
                "[[group.uplink]]\nname = \"u{u}\"\ninterface = \"e{g}x{u}\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n"
            );
        }
    }
    let e = parse_str(&groups).unwrap_err().to_string();
    assert!(e.contains("65 groups configured; at most 64"), "{e}");
}

#[test]
fn macs_parse_and_format() {
    assert_eq!(parse_mac("02:00:5e:00:53:01"), Some([2, 0, 0x5e, 0, 0x53, 1]));
    assert_eq!(parse_mac("02:00:5e:00:53"), None);
    assert_eq!(parse_mac("02:00:5e:00:53:01:02"), None);
    assert_eq!(parse_mac("02:00:5e:00:53:1"), None);
    assert_eq!(parse_mac("zz:00:5e:00:53:01"), None);
    assert_eq!(format_mac(&[2, 0, 0x5e, 0, 0x53, 1]), "02:00:5e:00:53:01");
}

#[test]
fn the_probe_load_per_gateway_follows_the_formula() {
    let text = "[[group]]\nname = \"ext\"\nbridge = \"br\"\nprobe_interval_ms = 10\ndata_plane_liveness = true\n\
                [[group.uplink]]\nname = \"a\"\ninterface = \"eth0\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n\
                [[group.uplink]]\nname = \"b\"\ninterface = \"eth1\"\ngateway = \"192.0.2.2\"\nprobe_source = \"192.0.2.250\"\n\
                standby_probe_interval_ms = 100\n\
                [[group]]\nname = \"old\"\nbridge = \"br\"\nprobe_interval_ms = 100\ndata_plane_liveness = false\n\
                [[group.uplink]]\nname = \"a\"\ninterface = \"eth2\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.251\"\n\
                [[group.uplink]]\nname = \"b\"\ninterface = \"eth3\"\ngateway = \"192.0.2.2\"\nprobe_source = \"192.0.2.251\"\n";
    let c = parse(text, Path::new("t.toml")).unwrap();
    let load = c.probe_load();
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let got: Vec<(String, f64, f64)> =
        load.iter().map(|l| (l.gateway.to_string(), round(l.quiet), round(l.busy))).collect();
    assert_eq!(
        got,
        vec![("192.0.2.1".into(), 110.0, 10.0), ("192.0.2.2".into(), 110.0, 20.0)],
        "quiet: 100 + 10 each; busy: ext's active 0, its standby 10/s; old: 10/s whatever"
    );
}

#[test]
fn a_standby_interval_below_the_groups_is_refused() {
    let text = "[[group]]\nname = \"ext\"\nbridge = \"br\"\nprobe_interval_ms = 100\n\
                [[group.uplink]]\nname = \"a\"\ninterface = \"eth0\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n\
                [[group.uplink]]\nname = \"b\"\ninterface = \"eth1\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n\
                standby_probe_interval_ms = 50\n";
    let e = parse(text, Path::new("t.toml")).unwrap_err().to_string();
    assert!(e.contains("uplink \"b\", standby_probe_interval_ms: 50 is out of range 100..=60000"), "{e}");
}
