//! What a reconnect costs now that TLS resumption is off: N times, a full mTLS handshake
//! plus one `ListHosts` call on a fresh connection, against a running controller.
//!
//! ```text
//! cargo run --release -p fleet-controller --example reconnect_cost -- 127.0.0.1:7443 DATA_DIR/admin 200
//! ```

use std::time::{Duration, Instant};

use fleet_proto::transport::{connect, identity_client_config};
use fleet_proto::v1::admin_client::AdminClient;
use fleet_proto::v1::ListHostsRequest;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: reconnect_cost ADDR ADMIN_IDENTITY_DIR [N]";
    let addr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let dir = std::path::PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!(usage))?);
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(200);
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    let config =
        identity_client_config(&read("ca.crt")?, &read("admin.crt")?, &read("admin.key")?)?;
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let ch = connect(&addr, config.clone(), Duration::from_secs(10)).await?;
        AdminClient::new(ch)
            .list_hosts(ListHostsRequest::default())
            .await?;
        took.push(start.elapsed());
    }
    took.sort();
    let pct = |p: f64| took[((took.len() - 1) as f64 * p) as usize];
    println!(
        "{n} reconnects (full handshake + ListHosts): p50 {:?}, p99 {:?}, max {:?}",
        pct(0.5),
        pct(0.99),
        took[took.len() - 1]
    );
    Ok(())
}
