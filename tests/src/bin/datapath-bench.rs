//! Datapath overhead, measured: `cargo run --release -p failover-tests --bin datapath-bench`.
//!
//! 1. Cost of the ingress programs (XDP, TC) per frame, from
//!    `BPF_PROG_TEST_RUN` with many repeats, for a valid probe reply, a
//!    rejected one, traffic from the gateway (a proof of life) and other
//!    traffic; and
//!    of the TC egress program per VM frame leaving the active uplink, with
//!    the kernel's fast rule (carrier read from the device, silence check)
//!    on and off.
//! 2. TCP throughput over a veth (iperf3, both directions) with no programs,
//!    with native XDP and with skb XDP, the uplink active.
//!
//! Prints a Markdown table. Needs root; iperf3 for part 2 (`apt-get install iperf3`).

use std::{
    process::{Command, ExitCode, Stdio},
    time::Duration,
};

use aya::{
    EbpfLoader,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use failover_agent::datapath::{
    Datapath, DatapathOptions, EbpfDatapath, IngressMode,
    ebpf::{carrier_globals, global_values, object},
};
use failover_common::{
    GROUP_KERNEL_FAILOVER, GroupState, Member, PROBE_MARK, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP,
    UPLINK_GATEWAY_MAC_KNOWN, UplinkConfig,
};
use failover_tests::{
    Netns, PinDir,
    lab::{GW_IP, GW1_MAC, PROBE_IP, UP1_MAC, group_state, uplink},
    packet::{arp_reply, test_frame},
};

const REPEAT: u32 = 1_000_000;

fn reply(spa: [u8; 4]) -> Vec<u8> {
    arp_reply(UP1_MAC, GW1_MAC, spa, UP1_MAC, PROBE_IP)
}

/// The frames the ingress programs are timed on, arriving on up1 (whose
/// gateway's MAC, `GW1_MAC`, is known).
fn ingress_frames() -> [(&'static str, Vec<u8>); 4] {
    let other_mac = [0x02, 0xfa, 0, 0, 0x0c, 0x09];
    [
        ("valid probe reply (counted, dropped)", reply(GW_IP)),
        ("spoofed reply (rejected, passed)", reply([192, 0, 2, 66])),
        (
            "traffic from the gateway (a proof of life: counted, its time recorded; passed)",
            test_frame(UP1_MAC, GW1_MAC, GW_IP, [192, 0, 2, 10], 0, 0),
        ),
        ("traffic from another MAC (passed)", test_frame(UP1_MAC, other_mac, GW_IP, [192, 0, 2, 10], 0, 0)),
    ]
}

/// Mean ns per frame of an ingress program (XDP, or TC ingress if `tc`)
/// on each of [`ingress_frames`] arriving on `ifindex`.
fn ingress_cost(pins: &PinDir, ifindex: u32, tc: bool) -> Vec<(&'static str, f64)> {
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pins.path().join("maps"))
        .load(object().expect("eBPF object"))
        .expect("load");
    // Credit slot 0 with probes, so that the valid reply is measured as one.
    let mut probes: aya::maps::Array<_, failover_common::ProbeCount> =
        aya::maps::Array::try_from(ebpf.map_mut(failover_common::MAP_PROBES).expect("PROBES")).expect("array");
    probes.set(0, failover_common::ProbeCount { sent: u64::MAX / 2, ..Default::default() }, 0).expect("credit probes");
    // The context: `struct __sk_buff` (ifindex at 40) or `struct xdp_md`
    // (data_end at 4, ingress_ifindex at 12).
    let ctx = |frame: &[u8]| -> Vec<u8> {
        if tc {
            let mut c = vec![0u8; 44];
            c[40..44].copy_from_slice(&ifindex.to_ne_bytes());
            c
        } else {
            let mut c = vec![0u8; 24];
            c[4..8].copy_from_slice(&u32::try_from(frame.len()).unwrap_or(0).to_ne_bytes());
            c[12..16].copy_from_slice(&ifindex.to_ne_bytes());
            c
        }
    };
    if tc {
        let p: &mut SchedClassifier = ebpf.program_mut(PROG_TC_INGRESS).expect("program").try_into().expect("TC");
        p.load().expect("load TC ingress");
        time_frames(p, ctx)
    } else {
        let p: &mut Xdp = ebpf.program_mut(PROG_XDP).expect("program").try_into().expect("XDP");
        p.load().expect("load XDP");
        time_frames(p, ctx)
    }
}

/// [`ingress_cost`]'s runs of a loaded program, with `ctx` for each frame.
fn time_frames<P>(prog: &P, ctx: impl Fn(&[u8]) -> Vec<u8>) -> Vec<(&'static str, f64)>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::TestRunResult>,
{
    ingress_frames()
        .into_iter()
        .map(|(name, frame)| {
            let c = ctx(&frame);
            let opts =
                TestRunOptions { data_in: Some(&frame), ctx_in: Some(&c), repeat: REPEAT, ..TestRunOptions::new() };
            // The kernel reports the mean time per run.
            (name, prog.test_run(opts).expect("test run").duration.as_secs_f64() * 1e9)
        })
        .collect()
}

/// Mean ns per run of the TC egress program on a VM frame leaving the active
/// uplink `ifindex`, with the carrier reads on or off.
fn tc_cost(pins: &PinDir, ifindex: u32, carrier: bool) -> f64 {
    let values = global_values(carrier.then(|| carrier_globals(true).expect("BTF offsets")));
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pins.path().join("maps"));
    for (name, value) in &values {
        loader.override_global(name, value, true);
    }
    let mut ebpf = loader.load(object().expect("eBPF object")).expect("load");
    let prog: &mut SchedClassifier = ebpf.program_mut(PROG_TC_EGRESS).expect("program").try_into().expect("TC");
    prog.load().expect("load TC");
    let frame = test_frame(GW1_MAC, UP1_MAC, [192, 0, 2, 10], GW_IP, 0, 0);
    let run = |mark: u32, repeat: u32| {
        let mut ctx = [0u8; 44];
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let opts = TestRunOptions { data_in: Some(&frame), ctx_in: Some(&ctx), repeat, ..TestRunOptions::new() };
        prog.test_run(opts).expect("test run").duration.as_secs_f64() * 1e9
    };
    // A probe first: the device is recorded, as a running agent's probes do.
    run(PROBE_MARK, 1);
    run(0, REPEAT)
}

fn iperf(host: &Netns, gw: &Netns, reverse: bool) -> Option<f64> {
    let mut server = Command::new("ip")
        .args(["netns", "exec", gw.name(), "iperf3", "-s", "-1", "-B", "192.0.2.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    let mut args = vec!["netns", "exec", host.name(), "iperf3", "-c", "192.0.2.1", "-t", "3", "-J"];
    if reverse {
        args.push("-R");
    }
    let out = Command::new("ip").args(&args).output().ok();
    let _ = server.kill();
    let _ = server.wait();
    let json = String::from_utf8(out?.stdout).ok()?;
    // "sum_received": { ... "bits_per_second": N ... }
    let at = json.find("\"sum_received\"")?;
    let rest = &json[at..];
    let bps = rest.split("\"bits_per_second\":").nth(1)?;
    let number: String =
        bps.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+').collect();
    number.parse::<f64>().ok().map(|b| b / 1e9)
}

fn main() -> ExitCode {
    if !failover_tests::privileged("datapath bench") {
        return ExitCode::FAILURE;
    }
    let host = Netns::new("h");
    let gw = Netns::new("g");
    host.veth("up1", UP1_MAC, &gw, "gw1", GW1_MAC);
    host.ip(&["addr", "add", "192.0.2.250/24", "dev", "up1"]);
    gw.ip(&["addr", "add", "192.0.2.1/24", "dev", "gw1"]);

    let pins = PinDir::new();
    let ifindex = host.run(|| {
        let mut dp = EbpfDatapath::open(&DatapathOptions {
            ingress: IngressMode::XdpNative,
            ..DatapathOptions::new(pins.path().to_path_buf())
        })
        .expect("open");
        // The gateway's MAC known: its frames are proofs of life.
        let cfg = UplinkConfig { gateway_mac: GW1_MAC, flags: UPLINK_GATEWAY_MAC_KNOWN, ..uplink(0, UP1_MAC) };
        dp.attach_uplink("up1", &cfg).expect("attach");
        let ifindex = failover_agent::datapath::ebpf::ifindex("up1").expect("up1");
        dp.set_group(0, &group_state(ifindex, GW1_MAC)).expect("group");
        ifindex
    });
    for (title, tc) in [("XDP program", false), ("TC ingress program", true)] {
        println!("| {title}, per frame (BPF_PROG_TEST_RUN x{REPEAT}) | ns |\n|---|---|");
        for (name, ns) in host.run(|| ingress_cost(&pins, ifindex, tc)) {
            println!("| {name} | {ns:.1} |");
        }
        println!();
    }
    println!("| TC egress program, per VM frame on the active uplink (BPF_PROG_TEST_RUN x{REPEAT}) | ns |\n|---|---|");
    let mut group = GroupState::inactive();
    group.member_count = 1;
    group.members[0] = Member { ifindex, slot: 0 };
    group.active_ifindex = ifindex;
    group.allowed = 1;
    group.down_after = 3;
    group.silence_ns = 31_000_000;
    for (name, flags, carrier) in [
        ("fast rule off (agent decides)", 0, false),
        ("fast rule on, silence check only (carrier reads off)", GROUP_KERNEL_FAILOVER, false),
        ("fast rule on, carrier read from the device + silence check (the default)", GROUP_KERNEL_FAILOVER, true),
    ] {
        let mut state = group;
        state.flags = flags;
        let ns = host.run(|| {
            let mut dp = EbpfDatapath::open(&DatapathOptions {
                ingress: IngressMode::XdpNative,
                ..DatapathOptions::new(pins.path().to_path_buf())
            })
            .expect("open");
            dp.set_group(0, &state).expect("group");
            tc_cost(&pins, ifindex, carrier)
        });
        println!("| {name} | {ns:.1} |");
    }
    drop(pins);

    if Command::new("iperf3").arg("--version").output().is_err() {
        println!("\niperf3 is not installed: throughput part left out (apt-get install iperf3)");
        return ExitCode::SUCCESS;
    }
    throughput(&host, &gw);
    ExitCode::SUCCESS
}

/// Interleaved rounds of the throughput part.
const ROUNDS: usize = 9;

/// TCP both ways over the veth, with each mode's programs on it and none:
/// interleaved rounds, so that the machine's drift touches all modes alike;
/// medians and the ratio to no programs.
fn throughput(host: &Netns, gw: &Netns) {
    // Interleaved rounds: each mode once per round, so that the machine's
    // drift touches them alike; medians and the ratio to no programs.
    let modes = [None, Some(IngressMode::Tc), Some(IngressMode::XdpNative), Some(IngressMode::XdpGeneric)];
    let mut down: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut up: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for _ in 0..ROUNDS {
        for (i, mode) in modes.iter().enumerate() {
            let pins = PinDir::new();
            if let Some(mode) = *mode {
                host.run(|| {
                    let mut dp =
                        EbpfDatapath::open(&DatapathOptions { ingress: mode, ..DatapathOptions::new(pins.path()) })
                            .expect("open");
                    dp.attach_uplink("up1", &uplink(0, UP1_MAC)).expect("attach");
                    let ifindex = failover_agent::datapath::ebpf::ifindex("up1").expect("up1");
                    dp.set_group(0, &group_state(ifindex, GW1_MAC)).expect("group");
                });
            }
            down[i].extend(iperf(host, gw, true));
            up[i].extend(iperf(host, gw, false));
        }
    }
    let median = |v: &[f64]| -> Option<f64> {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let (base_down, base_up) = (median(&down[0]), median(&up[0]));
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.1}-{hi:.1}")
    };
    let cell = |v: &[f64], base: Option<f64>| match (median(v), base) {
        (Some(g), Some(b)) if b > 0.0 => format!("{g:.2} ({:.0} %; {})", 100.0 * g / b, spread(v)),
        (Some(g), _) => format!("{g:.2}"),
        _ => "failed".to_string(),
    };
    println!(
        "\n| TCP over veth, programs on the active uplink (median of {ROUNDS} interleaved rounds, % of none; min-max) | gw -> host Gbit/s | host -> gw Gbit/s |\n|---|---|---|"
    );
    for (i, mode) in modes.iter().enumerate() {
        let name = match mode {
            None => "no programs",
            Some(IngressMode::Tc) => "TC ingress + TC egress (default)",
            Some(IngressMode::XdpNative) => "native XDP + TC",
            Some(IngressMode::XdpGeneric) => "generic XDP + TC",
        };
        println!("| {name} | {} | {} |", cell(&down[i], base_down), cell(&up[i], base_up));
    }
}
