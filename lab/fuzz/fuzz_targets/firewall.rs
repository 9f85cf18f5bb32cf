//! Firewall policy TOML → Policy → the `nft -f` file. A policy that parses must render, for
//! each host it names and one it does not, with the apps it names, a file in exactly the
//! shape `render` documents: rule lines built only from typed values, so no text from the
//! policy reaches nft. The input is the policy text itself, so the corpus stays readable.
#![no_main]

use std::net::IpAddr;

use fleet_fuzz::check_nft;
use fleet_proto::firewall::Policy;
use fleet_proto::spec::AppName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::parse(text) else {
        return;
    };
    // The agent passes only its own apps: validated names with nonzero listen ports.
    let mut apps: Vec<(String, u16)> = vec![("web".into(), 8000)];
    for (i, app) in policy.app_sources.keys().enumerate() {
        if app.parse::<AppName>().is_ok() {
            apps.push((app.clone(), 1 + (i as u16).wrapping_mul(7919) % 65535));
        }
    }
    let mut hosts: Vec<&str> = vec!["not-in-any-group"];
    hosts.extend(policy.groups.values().flatten().map(String::as_str).take(4));
    let controllers: [Option<IpAddr>; 3] = [
        None,
        Some("198.18.0.1".parse().unwrap()),
        Some("fd00::1".parse().unwrap()),
    ];
    for host in hosts {
        let out = policy.render(host, &apps);
        if let Err(e) = check_nft(&out, &apps) {
            panic!("bad nft file for host {host:?}: {e}\n{out}");
        }
        for c in controllers {
            for reason in policy.lockouts(host, c) {
                assert!(!reason.is_empty() && !reason.contains('\n'));
            }
        }
    }
});
