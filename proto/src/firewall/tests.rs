//! Policy parsing, the lockout check and the rendered nft file.

use std::net::IpAddr;

use super::*;

const BASE: &str = r#"
default = "reject"
admin_sources = ["198.18.0.1/32"]
prometheus_sources = ["198.18.0.1"]
[sets]
outer = ["198.18.0.1/32", "fd00::/64"]
v6 = ["abcd::1"]
[groups]
web = ["host1"]
[[allow]]
name = "ssh"
proto = "tcp"
ports = [22]
[[allow]]
name = "web"
proto = "tcp"
ports = [8000, "9000-9010"]
sources = ["outer"]
groups = ["web"]
"#;

fn ctl() -> Option<IpAddr> {
    Some("198.18.0.1".parse().unwrap())
}

#[test]
fn renders_a_whole_table_replacement() {
    let p = Policy::parse(BASE).unwrap();
    let t = p.render("host1", &[("shop".into(), 8080)]);
    assert!(t.starts_with("table inet fleet {}\ndelete table inet fleet\ntable inet fleet {\n"));
    assert!(t.contains("tcp dport { 22 } accept comment \"ssh\""));
    assert!(t.contains(
        "ip saddr { 198.18.0.1/32 } tcp dport { 8000, 9000-9010 } accept comment \"web\""
    ));
    assert!(t.contains("ip6 saddr { fd00::/64 } tcp dport { 8000, 9000-9010 } accept"));
    assert!(t.contains("ip saddr { 198.18.0.1/32 } tcp dport { 9437 } accept comment \"metrics\""));
    assert!(t.contains("tcp dport { 8080 } accept comment \"app-shop\""));
    assert!(t.contains("ct state established,related accept"));
    assert!(t.contains("reject with tcp reset"));
    // Per-group rules only on the group's hosts.
    assert!(!p.render("host2", &[]).contains("\"web\""));
}

#[test]
fn deny_rules_come_before_established() {
    let p = Policy::parse(&format!(
        "{BASE}\n[[deny]]\nname = \"bad\"\nsources = [\"10.0.0.0/8\"]\n"
    ))
    .unwrap();
    let t = p.render("host1", &[]);
    let deny = t.find("drop comment \"bad\"").unwrap();
    assert!(deny < t.find("established").unwrap());
}

#[test]
fn cidrs_are_normalised_and_compared() {
    let c = Cidr::parse("10.1.2.3/8").unwrap();
    assert_eq!(c.to_string(), "10.0.0.0/8");
    assert!(c.covers(&Cidr::parse("10.9.0.0/16").unwrap()));
    assert!(!c.covers(&Cidr::parse("11.0.0.0/16").unwrap()));
    assert!(!c.covers(&Cidr::parse("::/0").unwrap()));
    assert!(Cidr::parse("0.0.0.0/0")
        .unwrap()
        .covers(&Cidr::parse("1.2.3.4").unwrap()));
    assert!(Cidr::parse("10.0.0.0/33").is_err());
    assert!(Cidr::parse("ten").is_err());
}

#[test]
fn nothing_untyped_gets_through() {
    for bad in [
        "[[allow]]\nname = \"x; flush ruleset\"\nports = [1]\n",
        "[[allow]]\nname = \"x\"\nports = [1]\nsources = [\"1.2.3.4 } accept\"]\n",
        "[[allow]]\nname = \"x\"\nports = [\"1-x\"]\n",
        "[[allow]]\nname = \"x\"\nproto = \"icmp\"\nports = [1]\n",
        "[[allow]]\nname = \"x\"\nports = [1]\nsources = [\"nosuchset\"]\n",
        "[[allow]]\nname = \"x\"\n",
        "default = \"maybe\"\n",
        "bogus = 1\n",
        "confirm_timeout = \"1s\"\n",
    ] {
        assert!(Policy::parse(bad).is_err(), "accepted: {bad}");
    }
}

#[test]
fn a_policy_keeping_ssh_and_controller_is_not_a_lockout() {
    let p = Policy::parse(BASE).unwrap();
    assert_eq!(p.lockouts("host1", ctl()), Vec::<String>::new());
}

#[test]
fn dropping_the_controller_is_named() {
    let p = Policy::parse(&format!(
        "{BASE}\n[[deny]]\nname = \"outside\"\nsources = [\"198.18.0.0/24\"]\n"
    ))
    .unwrap();
    let why = p.lockouts("host1", ctl());
    assert!(why
        .iter()
        .any(|w| w.contains("\"outside\"") && w.contains("controller")));
    assert!(why.iter().any(|w| w.contains("SSH")));
}

#[test]
fn a_deny_on_an_unrelated_port_locks_nothing_out() {
    let p = Policy::parse(&format!(
        "{BASE}\n[[deny]]\nname = \"smtp\"\nproto = \"tcp\"\nports = [25]\n"
    ))
    .unwrap();
    assert!(p.lockouts("host1", ctl()).is_empty());
}

#[test]
fn ssh_missing_under_default_drop_is_refused() {
    let p = Policy::parse(
        "default = \"drop\"\nadmin_sources = [\"198.18.0.1\"]\n[[allow]]\nname = \"ssh-office\"\nproto = \"tcp\"\nports = [22]\nsources = [\"10.0.0.0/8\"]\n",
    )
    .unwrap();
    let why = p.lockouts("host1", ctl());
    assert_eq!(why.len(), 1);
    assert!(why[0].contains("SSH") && why[0].contains("198.18.0.1/32"));
    // Accept-by-default never blocks SSH.
    let p = Policy::parse("default = \"accept\"\n").unwrap();
    assert!(p.lockouts("host1", ctl()).is_empty());
}
